"""End to end with the real TapperEngine on the tiny backbone: `tapper serve add-key` and `tapper serve --run`
as a user would run them, then records -> generate (cold) -> refresh -> generate (personalized) -> forget."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_serve_support import start_server

TAPPER = [sys.executable, "-c", "from tapper.cli import app; app()"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import tapper.engine  # noqa: F401  (imports the model package before tapper.train, which needs it)
    from tapper.train import init_run

    return init_run(tmp_path_factory.mktemp("run") / "tiny", backbone="tiny", task="LaMP_3")


def test_the_cli_serves_a_tiny_run_end_to_end(tiny_run, tmp_path):
    db = f"sqlite:///{tmp_path / 'users.db'}"
    made = subprocess.run([*TAPPER, "serve", "add-key", "--tenant", "acme", "--db", db],
                          capture_output=True, text=True, timeout=120, check=True)
    key = made.stdout.strip()
    assert key.startswith("tpr_") and key not in (tmp_path / "users.db").read_bytes().decode("latin-1")
    server = start_server(tmp_path, {}, argv=[*TAPPER, "serve", "--run", str(tiny_run), "--db", db,
                                              "--max-batch", "4"])
    try:
        health = server.call("GET", "/healthz").json
        assert health["task"] == "LaMP_3" and health["row_size"] > 0
        posted = server.call("POST", "/v1/users/ann/records", {"records": [
            {"id": "r1", "text": "Loved it, works great", "score": 5, "date": "2020-01-01"},
            {"id": "r2", "text": "Broke after a week", "score": 1, "date": "2020-02-01"},
            {"id": "r3", "text": "Fine for the price", "score": 3, "date": "2020-03-01"},
        ]}, key=key)
        assert posted.status == 200 and posted.json["added"] == 3
        query = {"user_id": "ann", "task": "LaMP_3", "input": "review: great value, works great"}
        cold = server.call("POST", "/v1/generate", query, key=key)
        assert cold.status == 200 and cold.json["path"] == "cold_start"
        assert cold.json["record_ids"] and set(cold.json["record_ids"]) <= {"r1", "r2", "r3"}
        assert isinstance(cold.json["output"], str) and isinstance(cold.json["raw"], str)

        job = server.call("POST", "/v1/users/ann/refresh", key=key).json
        deadline = time.monotonic() + 120
        while (state := server.call("GET", f"/v1/jobs/{job['id']}", key=key).json)["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert state["status"] == "done" and state["total"] > 0 and state["loss"] is not None
        assert server.call("GET", "/v1/users/ann", key=key).json["row_version"] == 1

        both = server.call("POST", "/v1/generate", [query, {**query, "user_id": "newcomer"}], key=key)
        assert both.status == 200
        assert [r["path"] for r in both.json] == ["personalized", "non_personalized"]
        assert both.json[1]["record_ids"] == []

        assert server.call("DELETE", "/v1/users/ann", key=key).status == 204
        forgotten = server.call("POST", "/v1/generate", query, key=key).json
        assert forgotten["path"] == "non_personalized" and forgotten["record_ids"] == []
        metrics = server.call("GET", "/metrics").body
        assert 'tapper_requests_total{route="/v1/generate",status="200"} 3' in metrics
    finally:
        server.stop()
