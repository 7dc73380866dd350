"""Forget means forget, end to end: `tapper serve --run` on the tiny backbone (the real CLI, engine and store),
a user's records written through the API with a unique marker, a P_u row fitted, then DELETE /v1/users/{id}.

After a graceful SIGTERM, and after a SIGKILL followed by a restart, none of the store's files holds the
marker, the user id, the user's uid or the row's bytes, and the server's log (the access log included)
never held the user id or the marker.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_serve_support import FAKE_SERVE_ARGV, Server, add_key, start_server

from tapper.store import UserStore, encode_row

TAPPER = [sys.executable, "-c", "from tapper.cli import app; app()"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import tapper.engine  # noqa: F401  (imports the model package before tapper.train, which needs it)
    from tapper.train import init_run

    return init_run(tmp_path_factory.mktemp("run") / "tiny", backbone="tiny", task="LaMP_3")


def _serve(run: Path, db: str, tmp: Path) -> Server:
    return start_server(tmp, {}, argv=[*TAPPER, "serve", "--run", str(run), "--db", db, "--max-batch", "4"])


def _store_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _holding(directory: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    files = _store_files(directory)
    found = {what: [name for name, data in files.items() if needle in data] for what, needle in needles.items()}
    return {what: names for what, names in found.items() if names}


def _wait_job(server: Server, key: str, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while (job := server.call("GET", f"/v1/jobs/{job_id}", key=key).json)["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    return job


def _stop_with_sigterm(server: Server) -> int:
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=60)
    finally:
        server.kill()  # only acts if it did not stop


def _write_and_forget(server: Server, key: str, db: str) -> dict[str, bytes]:
    """Records with a marker for a fresh user, a fitted row, a bystander; then forget the user. The needles."""
    user = f"victim-{uuid.uuid4().hex[:12]}"
    marker = f"marker-{uuid.uuid4().hex}"
    records = [{"id": f"r{i}", "text": f"{marker} review number {i}", "score": 1 + i % 5,
                "date": f"2020-01-{i + 1:02d}"} for i in range(6)]
    records.append({"id": "long", "text": (marker + " ") * 400, "score": 4, "date": "2020-02-01"})  # overflow pages
    assert server.call("POST", f"/v1/users/{user}/records", {"records": records}, key=key).status == 200
    bystander = {"records": [{"id": "b1", "text": "the bystander stays", "score": 3}]}
    assert server.call("POST", "/v1/users/bystander/records", bystander, key=key).status == 200
    job = server.call("POST", f"/v1/users/{user}/refresh", key=key).json
    assert _wait_job(server, key, job["id"])["status"] == "done"
    query = {"user_id": user, "task": "LaMP_3", "input": "review: fine"}
    assert server.call("POST", "/v1/generate", query, key=key).json["path"] == "personalized"

    reader = UserStore(db)  # what the store holds for the user, read as a second process would
    try:
        head = reader.user_head("acme", user)
        _, row = reader.load_row(head.uid)
    finally:
        reader.close()
    needles = {"marker": marker.encode(), "user id": user.encode(), "uid": head.uid.encode(),
               "row bytes": encode_row(row)[0]}
    store_dir = Path(db.removeprefix("sqlite:///")).parent
    assert set(_holding(store_dir, needles)) == set(needles)  # the search does find them while they exist

    assert server.call("DELETE", f"/v1/users/{user}", key=key).status == 204
    assert server.call("POST", "/v1/generate", query, key=key).json["path"] == "non_personalized"
    return needles


@pytest.mark.parametrize("stop", ["sigterm", "sigkill-then-restart"])
def test_a_forgotten_user_is_in_none_of_the_store_files(tiny_run, tmp_path, stop):
    store_dir = tmp_path / "store"
    db = f"sqlite:///{store_dir / 'serve.db'}"
    key = add_key(db, "acme")
    server = _serve(tiny_run, db, tmp_path)
    try:
        needles = _write_and_forget(server, key, db)
        if stop == "sigterm":
            assert _stop_with_sigterm(server) == -signal.SIGTERM  # ended by the signal, after its cleanup
            # Only a clean close removes the WAL and shared-memory files: the store was closed.
            assert sorted(_store_files(store_dir)) == ["serve.db"]
        else:
            server.kill()
            assert _holding(store_dir, needles) == {}  # the forget had already checkpointed the WAL
            server = _serve(tiny_run, db, tmp_path)  # recovery after the crash
            assert server.call("GET", "/v1/users/bystander", key=key).json["records"] == 1
            assert _stop_with_sigterm(server) == -signal.SIGTERM
        assert _holding(store_dir, needles) == {}, "a forgotten user's bytes are still in the store's files"
        logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("server-*.log"))
        assert "POST /v1/users/{user_id}/records 200" in logs  # the access log names the route template...
        for what in ("marker", "user id"):  # ...and never the user
            assert needles[what].decode() not in logs, f"the {what} is in the server log"
    finally:
        server.stop()


def test_ctrl_c_closes_the_store_before_the_process_ends(tmp_path):
    """SIGINT (SIGTERM is above, with the real engine) through tapper serve's own run loop over the fake
    engine: the store is closed, so the WAL is folded into serve.db and removed, and only then does the
    process end by the signal it got."""
    stop = signal.SIGINT
    store_dir = tmp_path / "store"
    db = f"sqlite:///{store_dir / 'serve.db'}"
    key = add_key(db, "acme")
    server = start_server(tmp_path, {"TAPPER_TEST_DB": db}, argv=FAKE_SERVE_ARGV)
    try:
        body = {"records": [{"id": "r1", "text": "kept", "score": 4}]}
        assert server.call("POST", "/v1/users/ann/records", body, key=key).status == 200
        assert "serve.db-wal" in _store_files(store_dir)  # the server holds the store open
        server.proc.send_signal(stop)
        assert server.proc.wait(timeout=60) == -stop
    finally:
        server.stop()
    assert sorted(_store_files(store_dir)) == ["serve.db"]
    store = UserStore(db)
    try:
        assert store.user_head("acme", "ann").record_count == 1
    finally:
        store.close()
