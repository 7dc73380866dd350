"""Every endpoint of `tapper serve`, tenant isolation, the forget path, backpressure and bad input, against a
real server process on loopback (over the fake engine of test_serve_support)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from test_serve_support import FAKE_ROW_SIZE, Reply, Server, add_key, start_server

from tapper.serve.schemas import MAX_GENERATE_ITEMS, MAX_RECORDS_PER_REQUEST, MAX_TEXT_CHARS

MAX_BODY = 256 * 1024
METRICS_KEY = "metrics-key-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    db = f"sqlite:///{tmp / 'users.db'}"
    keys = {"acme": add_key(db, "acme"), "globex": add_key(db, "globex")}
    server = start_server(tmp, {"TAPPER_TEST_DB": db, "TAPPER_TEST_MAX_BODY": str(MAX_BODY),
                                "TAPPER_TEST_METRICS_KEY": METRICS_KEY})
    yield server, keys
    server.stop()


@pytest.fixture
def server(served) -> Server:
    return served[0]


@pytest.fixture
def acme(served) -> str:
    return served[1]["acme"]


@pytest.fixture
def globex(served) -> str:
    return served[1]["globex"]


def records(*ids: str, start_day: int = 1) -> dict:
    return {"records": [
        {"id": rid, "text": f"review {rid}", "score": 4, "date": f"2020-01-{start_day + i:02d}"}
        for i, rid in enumerate(ids)
    ]}


def gen(user: str, text: str = "how good is it?", **extra) -> dict:
    return {"user_id": user, "task": "LaMP_3", "input": text, **extra}


def wait_job(server: Server, key: str, job_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = server.call("GET", f"/v1/jobs/{job_id}", key=key).json
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} unfinished after {timeout_s} s")


def test_health_and_openapi(server):
    health = server.call("GET", "/healthz")
    assert health.status == 200 and health.json["task"] == "LaMP_3" and health.json["row_size"] == FAKE_ROW_SIZE
    schema = server.call("GET", "/openapi.json").json
    for path in ("/v1/users/{user_id}/records", "/v1/generate", "/v1/users/{user_id}/refresh",
                 "/v1/jobs/{job_id}", "/v1/users/{user_id}", "/healthz", "/metrics"):
        assert path in schema["paths"], path
    docs = server.call("GET", "/docs")
    assert docs.status == 200 and "swagger" in docs.body.lower()


def test_append_is_idempotent_and_a_changed_record_is_a_conflict(server, acme):
    first = server.call("POST", "/v1/users/ann/records", records("a1", "a2"), key=acme)
    assert first.status == 200 and first.json == {"user_id": "ann", "added": 2, "duplicates": 0, "total": 2}
    retry = server.call("POST", "/v1/users/ann/records", records("a1", "a2", "a3"), key=acme)
    assert retry.json == {"user_id": "ann", "added": 1, "duplicates": 2, "total": 3}
    changed = records("a1")
    changed["records"][0]["text"] = "edited"
    conflict = server.call("POST", "/v1/users/ann/records", changed, key=acme)
    assert conflict.status == 409 and "'a1'" in conflict.json["detail"]
    user = server.call("GET", "/v1/users/ann", key=acme).json
    assert user["records"] == 3 and user["row_version"] == 0


def test_generate_single_and_list_with_the_records_that_fed_pq(server, acme):
    server.call("POST", "/v1/users/bob/records", records("b1", "b2", "b3", "b4"), key=acme)
    one = server.call("POST", "/v1/generate", gen("bob"), key=acme)
    assert one.status == 200
    assert one.json["user_id"] == "bob" and one.json["path"] == "cold_start" and one.json["output"] == "cold"
    assert one.json["record_ids"] == ["b4", "b3", "b2"]
    many = server.call("POST", "/v1/generate", [gen("bob", date="2020-01-02"), gen("nobody")], key=acme)
    assert many.status == 200 and [r["user_id"] for r in many.json] == ["bob", "nobody"]
    assert many.json[0]["record_ids"] == ["b2", "b1"]  # only records dated before the query
    assert many.json[1]["record_ids"] == [] and many.json[1]["path"] == "cold_start"
    alias = server.call("POST", "/v1/generate", {**gen("bob"), "task": "lamp3"}, key=acme)
    assert alias.status == 200 and alias.json["task"] == "LaMP_3"


def test_refresh_fits_the_row_in_a_background_job(server, acme):
    server.call("POST", "/v1/users/cy/records", records("c1", "c2", "c3"), key=acme)
    started = server.call("POST", "/v1/users/cy/refresh", key=acme)
    assert started.status == 202 and started.json["status"] in ("queued", "running", "done")
    job = wait_job(server, acme, started.json["id"])
    assert job["status"] == "done" and job["step"] == job["total"] == 4 and job["loss"] == pytest.approx(0.25)
    user = server.call("GET", "/v1/users/cy", key=acme).json
    assert user["row_version"] == 1 and user["row_fitted_on_history_version"] == user["history_version"]
    out = server.call("POST", "/v1/generate", gen("cy"), key=acme).json
    assert out["path"] == "personalized" and out["output"] == f"sum={3.0 * FAKE_ROW_SIZE:.1f}"
    assert server.call("POST", "/v1/users/ghost/refresh", key=acme).status == 404
    assert server.call("GET", "/v1/jobs/" + "0" * 32, key=acme).status == 404


def test_delete_forgets_the_user_and_later_generates_are_cold(server, acme):
    server.call("POST", "/v1/users/dee/records", records("d1", "d2"), key=acme)
    job = server.call("POST", "/v1/users/dee/refresh", key=acme).json
    wait_job(server, acme, job["id"])
    assert server.call("POST", "/v1/generate", gen("dee"), key=acme).json["path"] == "personalized"
    gone = server.call("DELETE", "/v1/users/dee", key=acme)
    assert gone.status == 204
    assert server.call("GET", "/v1/users/dee", key=acme).status == 404
    assert server.call("GET", f"/v1/jobs/{job['id']}", key=acme).status == 404
    assert server.call("DELETE", "/v1/users/dee", key=acme).status == 404
    after = server.call("POST", "/v1/generate", gen("dee"), key=acme).json
    assert after["path"] == "cold_start" and after["record_ids"] == [] and after["output"] == "cold"
    again = server.call("POST", "/v1/users/dee/records", records("d1"), key=acme).json
    assert again["added"] == 1 and again["total"] == 1  # a new user: the old records are gone


def test_a_tenant_only_sees_its_own_users(server, acme, globex):
    server.call("POST", "/v1/users/eve/records", records("e1", "e2"), key=acme)
    job = server.call("POST", "/v1/users/eve/refresh", key=acme).json
    wait_job(server, acme, job["id"])
    assert server.call("GET", "/v1/users/eve", key=globex).status == 404
    assert server.call("POST", "/v1/users/eve/refresh", key=globex).status == 404
    assert server.call("DELETE", "/v1/users/eve", key=globex).status == 404
    assert server.call("GET", f"/v1/jobs/{job['id']}", key=globex).status == 404
    theirs = server.call("POST", "/v1/generate", gen("eve"), key=globex).json
    assert theirs["record_ids"] == [] and theirs["path"] == "cold_start"
    own = server.call("POST", "/v1/users/eve/records", records("x1"), key=globex).json
    assert own == {"user_id": "eve", "added": 1, "duplicates": 0, "total": 1}
    mine = server.call("GET", "/v1/users/eve", key=acme).json
    assert mine["records"] == 2 and mine["row_version"] == 1
    assert server.call("POST", "/v1/generate", gen("eve"), key=acme).json["record_ids"] == ["e2", "e1"]


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/users/u/records", records("r")),
    ("GET", "/v1/users/u", None),
    ("DELETE", "/v1/users/u", None),
    ("POST", "/v1/users/u/refresh", None),
    ("GET", "/v1/jobs/abc", None),
    ("POST", "/v1/generate", gen("u")),
])
@pytest.mark.parametrize("key", [None, "tpr_wrong", ""])
def test_missing_or_wrong_key_is_401(server, method, path, body, key):
    reply = server.call(method, path, body, key=key)
    assert reply.status == 401 and reply.headers.get("www-authenticate") == "Bearer"
    assert "API key" in reply.json["detail"]


def test_the_x_api_key_header_works_too(server, acme):
    reply = server.call("GET", "/v1/users/nobody", headers={"X-API-Key": acme})
    assert reply.status == 404


def _record(**fields) -> dict:
    return {"records": [{"id": "r1", "text": "ok", **fields}]}


BAD_INPUT = [
    # (name, method, path, body or raw bytes, status, fragment expected in the error text)
    ("oversized record text", "POST", "/v1/users/u/records", _record(text="x" * (MAX_TEXT_CHARS + 1)), 422,
     "at most"),
    ("oversized generate input", "POST", "/v1/generate", gen("u", "x" * (MAX_TEXT_CHARS + 1)), 422, "at most"),
    ("unknown task", "POST", "/v1/generate", {**gen("u"), "task": "LaMP_99"}, 422, "unknown task"),
    ("task the run cannot serve", "POST", "/v1/generate", {**gen("u"), "task": "LaMP_4"}, 400, "serves LaMP_3"),
    ("malformed record date", "POST", "/v1/users/u/records", _record(date="2020-13-45"), 422, "malformed date"),
    ("malformed query date", "POST", "/v1/generate", gen("u", date="yesterday"), 422, "malformed date"),
    ("boolean date", "POST", "/v1/users/u/records", _record(date=True), 422, "date"),
    ("text of the wrong type", "POST", "/v1/users/u/records", _record(text=5), 422, "valid string"),
    ("score of the wrong type", "POST", "/v1/users/u/records", _record(score=[4]), 422, "score"),
    ("records not a list", "POST", "/v1/users/u/records", {"records": {"id": "a"}}, 422, "valid list"),
    ("no records", "POST", "/v1/users/u/records", {"records": []}, 422, "at least 1"),
    ("too many records", "POST", "/v1/users/u/records",
     {"records": [{"id": f"r{i}", "text": "t"} for i in range(MAX_RECORDS_PER_REQUEST + 1)]}, 422, "at most"),
    ("record without text", "POST", "/v1/users/u/records", {"records": [{"id": "r1", "score": 3}]}, 422,
     "no text"),
    ("record without id", "POST", "/v1/users/u/records", {"records": [{"text": "t"}]}, 422, "id"),
    ("unknown field", "POST", "/v1/users/u/records", _record(txet="typo"), 422, "txet"),
    ("generate without input", "POST", "/v1/generate", {"user_id": "u", "task": "LaMP_3"}, 422, "input"),
    ("generate not an object", "POST", "/v1/generate", "just a string", 422, "dictionary"),
    ("generate list too long", "POST", "/v1/generate", [gen("u")] * (MAX_GENERATE_ITEMS + 1), 422, "at most"),
    ("generate empty list", "POST", "/v1/generate", [], 422, "at least 1"),
    ("user id with a slash-like char", "POST", "/v1/generate", gen("a b"), 422, "pattern"),
    ("user id too long in the path", "GET", "/v1/users/" + "u" * 129, None, 422, "at most"),
    ("bad user id in the path", "POST", "/v1/users/a%20b/records", _record(), 422, "pattern"),
    ("job id not hex", "GET", "/v1/jobs/zz-top", None, 422, "pattern"),
    ("invalid JSON", "POST", "/v1/generate", b'{"user_id": ', 422, "JSON"),
    ("not UTF-8", "POST", "/v1/users/u/records", b'\xff\xfe{"records": 1}', 422, ""),
    ("deeply nested JSON", "POST", "/v1/generate", b"[" * 100_000 + b"]" * 100_000, 422, "nested deeper than"),
    ("nesting below what json.loads refuses", "POST", "/v1/users/u/records",
     b'{"records": [{"id": "r", "text": "t", "label": ' + b"[" * 200 + b"]" * 200 + b"}]}", 422, "nested deeper"),
    ("body too large", "POST", "/v1/users/u/records", b"x" * (MAX_BODY + 1), 413, "larger than"),
    # what Python's json.loads lets through, and what the probe of issue 16 found accepted or crashing
    ("duplicate key", "POST", "/v1/users/u/records", b'{"records": [{"id": "r1", "text": "a", "text": "b"}]}',
     422, "appears twice"),
    ("duplicate key at the top", "POST", "/v1/generate",
     b'{"user_id": "u", "task": "LaMP_3", "input": "x", "user_id": "v"}', 422, "appears twice"),
    ("NaN score", "POST", "/v1/users/u/records", b'{"records": [{"id": "r1", "text": "a", "score": NaN}]}', 422,
     "NaN is not valid JSON"),
    ("Infinity score", "POST", "/v1/users/u/records",
     b'{"records": [{"id": "r1", "text": "a", "score": -Infinity}]}', 422, "Infinity is not valid JSON"),
    ("float overflowing to infinity", "POST", "/v1/users/u/records",
     b'{"records": [{"id": "r1", "text": "a", "score": 1e999}]}', 422, "out of range"),
    ("5,000-digit number", "POST", "/v1/users/u/records",
     b'{"records": [{"id": "r1", "text": "a", "date": ' + b"7" * 5000 + b"}]}", 422, "5000 characters"),
    ("lone surrogate", "POST", "/v1/users/u/records", b'{"records": [{"id": "r1", "text": "a\\ud800b"}]}', 422,
     "surrogate"),
    ("LaMP-3 score in words", "POST", "/v1/users/u/records", _record(score="five"), 422, "rating from 1 to 5"),
    ("LaMP-3 score above 5", "POST", "/v1/users/u/records", _record(score=7), 422, "rating from 1 to 5"),
    ("LaMP-3 score below 1", "POST", "/v1/users/u/records", _record(score=0.5), 422, "rating from 1 to 5"),
    ("LaMP-3 score as the string NaN", "POST", "/v1/users/u/records", _record(score="NaN"), 422, "rating"),
    ("blank record id", "POST", "/v1/users/u/records", {"records": [{"id": "  ", "text": "t"}]}, 422, "non-space"),
    ("blank generate input", "POST", "/v1/generate", gen("u", "   "), 422, "non-space"),
    ("date before year 1 after its zone", "POST", "/v1/users/u/records", _record(date="0001-01-01T00:00:00+05:00"),
     422, "outside the supported range"),
    ("query date past 9999 after its zone", "POST", "/v1/generate", gen("u", date="9999-12-31T23:00:00-05:00"),
     422, "outside the supported range"),
    ("date of -9e10 seconds", "POST", "/v1/users/u/records", _record(date=-9e10), 422, "outside the supported"),
    ("date as a huge integer", "POST", "/v1/users/u/records", _record(date=10**60), 422, "too large"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_4xx_with_a_clear_message(server, acme, case):
    _, method, path, body, status, fragment = case
    raw = body if isinstance(body, bytes) else None
    reply = _call_tolerating_early_close(server, method, path, None if raw else body, acme, raw)
    assert reply.status == status, reply.body
    assert fragment.lower() in json.dumps(reply.json).lower()
    assert server.call("GET", "/healthz").status == 200  # and the server is still fine
    assert server.call("GET", "/v1/users/u", key=acme).status == 404  # nothing of a refused request is stored


def test_a_json_problem_names_its_place_in_the_body(server, acme):
    body = b'{"records": [{"id": "r1", "text": "a"}, {"id": "r2", "text": "b", "score": 3, "score": 4}]}'
    reply = server.call("POST", "/v1/users/u/records", raw=body, key=acme)
    assert reply.status == 422
    assert reply.json["detail"][0]["loc"] == ["body", "records", 1, "score"]
    scored = server.call("POST", "/v1/users/u/records", _record(score="9"), key=acme)
    assert scored.json["detail"] == [{"loc": ["body", "records", 0, "score"], "type": "value_error",
                                      "msg": "expected a rating from 1 to 5 (a number or a numeric string), "
                                             "got '9' (LaMP_3)"}]


def _call_tolerating_early_close(server, method, path, body, key, raw) -> Reply:
    """A server that refuses a big body may close before the client finished sending it; then ask with a raw
    socket that sends only the headers (the refusal must not depend on reading the body)."""
    try:
        return server.call(method, path, body, key=key, raw=raw)
    except OSError:
        return _raw_request(server, method, path, key, {"Content-Length": str(len(raw or b""))}, b"")


def _raw_request(server: Server, method: str, path: str, key: str, headers: dict[str, str], body: bytes) -> Reply:
    host, port = server.base.removeprefix("http://").split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {key}",
             "Content-Type: application/json", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return Reply(status, json.loads(payload) if payload.strip().startswith(b"{") else payload.decode())


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(server, acme):
    chunk = b"x" * (MAX_BODY + 10)
    body = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"  # no final 0-chunk: the server must not wait for it
    reply = _raw_request(server, "POST", "/v1/users/u/records", acme, {"Transfer-Encoding": "chunked"}, body)
    assert reply.status == 413 and "larger than" in reply.json["detail"]


def test_a_declared_length_over_the_limit_is_refused_before_reading(server, acme):
    reply = _raw_request(server, "POST", "/v1/users/u/records", acme, {"Content-Length": str(10**9)}, b"")
    assert reply.status == 413


def test_a_failing_request_fails_alone_in_its_batch(server, acme):
    results: dict[str, Reply] = {}

    def send(name: str, text: str) -> None:
        results[name] = server.call("POST", "/v1/generate", gen(name, text), key=acme)

    log_before = len(server.log())
    threads = [threading.Thread(target=send, args=(f"user{i}", "BOOM" if i == 2 else "fine")) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    failed = results["user2"]
    assert failed.status == 500 and failed.json["detail"] == "internal error"
    assert "fake engine" not in json.dumps(failed.json) and "RuntimeError" not in json.dumps(failed.json)
    request_id = failed.json["request_id"]
    assert failed.headers.get("x-request-id") == request_id
    assert all(results[f"user{i}"].status == 200 for i in (0, 1, 3, 4))
    assert server.call("GET", "/healthz").status == 200
    log = server.log()[log_before:]  # the log holds what the client was not told, under the request id
    assert f"request {request_id} (POST /v1/generate) failed" in log and "fake engine asked to fail" in log
    assert log.count("Traceback") == 1  # one traceback per failure, not the server's second copy


def test_a_failed_refresh_job_says_only_that_it_failed(server, acme):
    server.call("POST", "/v1/users/fay/records", {"records": [{"id": "f1", "text": "BOOM goes the fit"}]}, key=acme)
    log_before = len(server.log())
    job = wait_job(server, acme, server.call("POST", "/v1/users/fay/refresh", key=acme).json["id"])
    assert job["status"] == "failed" and job["error"] == f"internal error (the server log has job {job['id']})"
    log = server.log()[log_before:]
    assert f"refresh job {job['id']} failed" in log and "fake fit asked to fail" in log


def test_metrics_count_requests_batches_and_users(server, acme):
    server.call("POST", "/v1/users/met/records", records("m1"), key=acme)
    server.call("POST", "/v1/generate", [gen("met"), gen("met2")], key=acme)
    text = server.call("GET", "/metrics").body
    assert 'tapper_requests_total{route="/v1/generate",status="200"}' in text
    assert 'tapper_request_seconds_bucket{route="/v1/users/{user_id}/records",le="+Inf"}' in text
    assert "tapper_batch_size_count" in text and 'tapper_batch_size_bucket{le="2"}' in text
    assert "tapper_engine_seconds_count" in text
    assert "/v1/users/met" not in text  # routes are labelled by template, never by user id
    # figures across tenants only with the metrics key
    assert "tapper_users" not in text and "tapper_cached_users" not in text
    private = server.call("GET", "/metrics", key=METRICS_KEY).body
    users = next(line for line in private.splitlines() if line.startswith("tapper_users "))
    assert int(users.split()[1]) >= 1 and "tapper_cached_users " in private
    for wrong in (acme, "not-the-metrics-key"):
        assert server.call("GET", "/metrics", key=wrong).status == 401


def test_every_response_carries_a_request_id(server, acme):
    ok = server.call("GET", "/healthz")
    missing = server.call("GET", "/v1/users/nobody", key=acme)
    ids = {ok.headers.get("x-request-id"), missing.headers.get("x-request-id")}
    assert None not in ids and len(ids) == 2


# ---- backpressure and batching, on a server whose engine a test can hold busy ----------------------------

@pytest.fixture(scope="module")
def held(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("held")
    db = f"sqlite:///{tmp / 'users.db'}"
    key = add_key(db, "acme")
    block = tmp / "block"
    server = start_server(tmp, {"TAPPER_TEST_DB": db, "FAKE_BLOCK_FILE": str(block),
                                "TAPPER_TEST_QUEUE_SIZE": "3", "TAPPER_TEST_MAX_JOBS": "1"})
    yield server, key, block
    block.unlink(missing_ok=True)
    server.stop()


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _batch_count(server: Server) -> int:
    lines = server.call("GET", "/metrics").body.splitlines()
    return next((int(ln.split()[1]) for ln in lines if ln.startswith("tapper_batch_size_count ")), 0)


def test_a_full_queue_answers_503_with_retry_after_and_waiting_requests_share_a_batch(held):
    server, key, block = held
    block.touch()
    results: dict[str, Reply] = {}

    def send(name: str) -> None:
        results[name] = server.call("POST", "/v1/generate", gen(name), key=key, timeout=60)

    batches_before = _batch_count(server)
    busy = threading.Thread(target=send, args=("first",))
    busy.start()
    _wait_for(lambda: _batch_count(server) == batches_before + 1)  # "first" is in the (blocked) engine
    waiting = [threading.Thread(target=send, args=(f"w{i}",)) for i in range(3)]
    for t in waiting:
        t.start()
    _wait_for(lambda: server.call("GET", "/healthz").json["queue"] == 3)
    refused = server.call("POST", "/v1/generate", gen("late"), key=key)
    assert refused.status == 503 and refused.headers.get("retry-after") == "1"
    assert "queue is full" in refused.json["detail"]
    block.unlink()
    for t in [busy, *waiting]:
        t.join(timeout=60)
    assert results["first"].status == 200
    assert all(results[f"w{i}"].status == 200 for i in range(3))
    assert {results[f"w{i}"].json["raw"] for i in range(3)} == {"cold (3 in batch)"}
    assert 'tapper_rejected_total{queue="generate"} 1' in server.call("GET", "/metrics").body


def test_a_list_larger_than_the_whole_queue_is_refused_as_unservable(held):
    server, key, _ = held
    reply = server.call("POST", "/v1/generate", [gen(f"u{i}") for i in range(4)], key=key)
    assert reply.status == 422 and "queue holds 3" in reply.json["detail"]


def test_too_many_refresh_jobs_answer_503_and_a_repeated_refresh_returns_the_same_job(held):
    server, key, block = held
    for name in ("j1", "j2"):
        server.call("POST", f"/v1/users/{name}/records", records("a"), key=key)
    block.touch()
    try:
        first = server.call("POST", "/v1/users/j1/refresh", key=key)
        assert first.status == 202
        repeat = server.call("POST", "/v1/users/j1/refresh", key=key)
        other = server.call("POST", "/v1/users/j2/refresh", key=key)
        assert repeat.status == 202 and repeat.json["id"] == first.json["id"]
        assert other.status == 503 and other.headers.get("retry-after") == "1"
    finally:
        block.unlink()
    assert wait_job(server, key, first.json["id"])["status"] == "done"


# -- trying the API: the security scheme and examples in the OpenAPI, the content type, keys, int8 rows ------

def test_openapi_declares_the_key_schemes_so_docs_has_authorize(server):
    schema = server.call("GET", "/openapi.json").json
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, method in (("/v1/users/{user_id}/records", "post"), ("/v1/generate", "post"),
                         ("/v1/users/{user_id}/refresh", "post"), ("/v1/jobs/{job_id}", "get"),
                         ("/v1/users/{user_id}", "delete")):
        assert {"bearer": []} in schema["paths"][path][method]["security"], path
    for path in ("/healthz", "/metrics"):
        assert "security" not in schema["paths"][path]["get"], path


def test_the_request_examples_in_the_docs_are_accepted(server, acme):
    from tapper.serve.schemas import GENERATE_EXAMPLES, RECORDS_EXAMPLES

    paths = server.call("GET", "/openapi.json").json["paths"]
    shown = paths["/v1/users/{user_id}/records"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {k: v["value"] for k, v in shown.items()} == {k: v["value"] for k, v in RECORDS_EXAMPLES.items()}
    shown = paths["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {k: v["value"] for k, v in shown.items()} == {k: v["value"] for k, v in GENERATE_EXAMPLES.items()}
    for i, example in enumerate(RECORDS_EXAMPLES.values()):
        reply = server.call("POST", f"/v1/users/docs-example-{i}/records", example["value"], key=acme)
        assert reply.status == 200, reply.json
    for example in GENERATE_EXAMPLES.values():
        reply = server.call("POST", "/v1/generate", example["value"], key=acme)
        assert reply.status == 200, reply.json


def test_a_body_without_the_json_content_type_is_a_415_that_says_to_set_it(server, acme):
    import http.client

    body = json.dumps(records("ct1"))
    form = server.call("POST", "/v1/users/ct-user/records", raw=body.encode(), key=acme,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})  # what curl -d sends
    assert form.status == 415 and "Content-Type: application/json" in form.json["detail"], form.json
    assert server.call("GET", "/v1/users/ct-user", key=acme).status == 404  # nothing stored
    # no Content-Type at all: read as JSON
    host, port = server.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v1/users/ct-user/records", body=body.encode(),
                     headers={"Authorization": f"Bearer {acme}"})
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
    finally:
        conn.close()
    # a route without a body does not care
    refresh = server.call("POST", "/v1/users/ct-user/refresh", key=acme)
    assert refresh.status == 202


def test_keys_are_listed_by_id_and_a_revoked_key_is_refused_at_once(tmp_path):
    from fastapi.testclient import TestClient
    from test_serve_support import FakeEngine
    from typer.testing import CliRunner

    from tapper.cli import app
    from tapper.data.tasks import get_task
    from tapper.serve import create_app, hash_api_key
    from tapper.store import UserStore

    db = f"sqlite:///{tmp_path / 'keys.db'}"
    runner = CliRunner()
    keys = {}
    for tenant in ("acme", "globex", "initech"):
        made = runner.invoke(app, ["serve", "add-key", "--tenant", tenant, "--db", db])
        assert made.exit_code == 0, made.output
        keys[tenant] = made.output.strip().splitlines()[-1]
    store = UserStore(db)  # the server's own store, open while the CLI changes the keys
    try:
        with TestClient(create_app(FakeEngine(), store, get_task("LaMP_3"))) as client:
            def status(key: str) -> int:
                return client.get("/v1/users/nobody", headers={"Authorization": f"Bearer {key}"}).status_code

            assert status(keys["initech"]) == 404  # accepted: the user is just not there
            listed = runner.invoke(app, ["serve", "list-keys", "--db", db, "--tenant", "initech"])
            assert listed.exit_code == 0, listed.output
            key_id = hash_api_key(keys["initech"])[:12]
            assert f"{key_id}\tinitech\t" in listed.output and keys["initech"] not in listed.output
            assert "acme" not in listed.output
            everyone = runner.invoke(app, ["serve", "list-keys", "--db", db]).output
            assert all(f"\t{t}\t" in everyone for t in keys)

            bad = runner.invoke(app, ["serve", "revoke-key", "--db", db, "--id", "xyz"])
            assert bad.exit_code == 2 and "hex digits" in bad.output
            both = runner.invoke(app, ["serve", "revoke-key", "--db", db, "--id", key_id, "--tenant", "acme"])
            assert both.exit_code == 2
            revoked = runner.invoke(app, ["serve", "revoke-key", "--db", db, "--id", key_id])
            assert revoked.exit_code == 0 and f"revoked {key_id} (initech)" in revoked.output, revoked.output
            assert status(keys["initech"]) == 401 and status(keys["acme"]) == 404  # only that key
            again = runner.invoke(app, ["serve", "revoke-key", "--db", db, "--key", keys["initech"]])
            assert again.exit_code == 1 and "no such key" in again.output
            tenant = runner.invoke(app, ["serve", "revoke-key", "--db", db, "--tenant", "globex"])
            assert tenant.exit_code == 0 and "(globex)" in tenant.output
            assert status(keys["globex"]) == 401 and status(keys["acme"]) == 404
    finally:
        store.close()


def test_add_key_defaults_to_the_run_store_like_serve(tmp_path):
    from typer.testing import CliRunner

    from tapper.cli import app
    from tapper.store import UserStore

    run = tmp_path / "run"
    run.mkdir()
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "add-key", "--tenant", "acme"])
    assert missing.exit_code == 2 and "--run" in missing.output
    made = runner.invoke(app, ["serve", "add-key", "--tenant", "acme", "--run", str(run)])
    assert made.exit_code == 0, made.output
    store = UserStore(f"sqlite:///{run / 'serve.db'}")  # what `tapper serve --run RUN` opens
    try:
        from tapper.serve import hash_api_key

        assert store.tenant_for_key(hash_api_key(made.output.strip().splitlines()[-1])) == "acme"
    finally:
        store.close()
    listed = runner.invoke(app, ["serve", "list-keys", "--run", str(run)])
    assert listed.exit_code == 0 and "\tacme\t" in listed.output


@pytest.mark.parametrize("row_format, row_bytes", [("int8", FAKE_ROW_SIZE + 4), ("float32", 4 * FAKE_ROW_SIZE)])
def test_refitted_rows_are_stored_in_the_configured_format_and_served(tmp_path, row_format, row_bytes):
    import sqlite3

    from fastapi.testclient import TestClient
    from test_serve_support import FakeEngine

    from tapper.data.tasks import get_task
    from tapper.serve import create_api_key, create_app
    from tapper.store import UserStore

    path = tmp_path / "rows.db"
    store = UserStore(f"sqlite:///{path}", row_format=row_format)
    try:
        key = create_api_key(store, "acme")
        with TestClient(create_app(FakeEngine(), store, get_task("LaMP_3"))) as client:
            auth = {"Authorization": f"Bearer {key}"}
            assert client.post("/v1/users/ann/records", json=records("x1", "x2", "x3"), headers=auth).status_code == 200
            job = client.post("/v1/users/ann/refresh", headers=auth).json()
            for _ in range(600):
                job = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
                if job["status"] in ("done", "failed"):
                    break
                time.sleep(0.05)
            assert job["status"] == "done", job
            with sqlite3.connect(path) as raw:
                (data,) = raw.execute("SELECT row_data FROM users WHERE user_id = 'ann'").fetchone()
            assert len(data) == row_bytes
            out = client.post("/v1/generate", json=gen("ann"), headers=auth).json()
            # the fake fits a row of 3.0s (the record count); int8 keeps it to within scale / 2 per number
            assert out["path"] == "personalized" and out["output"] == f"sum={3.0 * FAKE_ROW_SIZE:.1f}"
    finally:
        store.close()


def test_rows_round_trip_in_both_formats_and_a_corrupt_row_is_named():
    import torch

    from tapper.store import StoreError, decode_row, encode_row

    row = torch.linspace(-1.5, 2.0, 24)
    exact, size = encode_row(row)
    assert size == 24 and len(exact) == 96 and torch.equal(decode_row(exact, 24, 24, "u"), row)
    small, size = encode_row(row, "int8")
    assert size == 24 and len(small) == 28
    back = decode_row(small, 24, 24, "u")
    scale = 2.0 / 127
    assert float((back - row).abs().max()) <= scale / 2 + 1e-6
    assert not torch.equal(back, row)  # it is a rounding, not a copy
    with pytest.raises(StoreError, match="corrupt"):
        decode_row(small[:-1], 24, 24, "user 'ann'")
    with pytest.raises(StoreError, match="another run"):
        decode_row(small, 24, 32, "u")
    with pytest.raises(ValueError, match="row format"):
        encode_row(row, "int4")


def test_quantize_writes_the_run_user_table_as_int8(tmp_path):
    import torch
    from typer.testing import CliRunner

    from tapper.cli import app
    from tapper.prefix.user_state import USERS_NAME, WEIGHTS_NAME, UserStateTable

    run = tmp_path / "run"
    table = UserStateTable(64, init_std=0.5)
    table.add_users([f"u{i}" for i in range(10)])
    with torch.no_grad():
        table.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    table.save_pretrained(run / "user_state")
    before = (run / "user_state" / WEIGHTS_NAME).stat().st_size
    result = CliRunner().invoke(app, ["quantize", "--run", str(run)])
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "user_state" / USERS_NAME).read_text())
    assert meta["int8"] is True and meta["user_ids"] == [f"u{i}" for i in range(10)]
    assert (run / "user_state" / WEIGHTS_NAME).stat().st_size < before / 2
    loaded = UserStateTable.from_pretrained(run / "user_state")
    scale = table.weight.abs().amax(dim=1) / 127
    assert bool(((loaded.weight - table.weight).abs() <= scale[:, None] / 2 + 1e-6).all())
    missing = CliRunner().invoke(app, ["quantize", "--run", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "user table" in missing.output
