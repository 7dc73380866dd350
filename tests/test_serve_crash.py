"""Crash consistency: SIGKILL a real server halfway through an append and halfway through a refresh, then
check that the store holds the old state (never half of the new one) and that a restarted server recovers.

The store's test-only hooks (tapper/store/crash_hooks.py) hold each write open between its steps and drop a
marker file, so the kill lands at a known point inside the transaction.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from test_serve_support import FAKE_ROW_SIZE, PG_URL, Server, add_key, fresh_store_url, start_server

from tapper.store import NewRecord, UserStore

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason="no TAPPER_TEST_PG_URL"))]
OLD_ROW = torch.full((FAKE_ROW_SIZE,), 0.5)


def _seed(db: str) -> None:
    """User 'kim' with two records and a fitted row (version 1)."""
    store = UserStore(db)
    try:
        store.bind_row_size(FAKE_ROW_SIZE)
        store.append_records("acme", "kim", [NewRecord(f"old{i}", {"text": f"t{i}", "score": "3"}, float(i))
                                             for i in range(2)])
        head = store.user_head("acme", "kim")
        job, _ = store.start_job("acme", "kim", head.uid, total=1)
        store.finish_refresh(job.id, head.uid, OLD_ROW, head.history_version)
    finally:
        store.close()


def _state(db: str) -> tuple[list[str], int, int, torch.Tensor]:
    """(record ids, history version, row version, row) as a fresh process would read them."""
    store = UserStore(db)
    try:
        head = store.user_head("acme", "kim")
        _, history = store.load_history(head.uid)
        row_version, row = store.load_row(head.uid, FAKE_ROW_SIZE)
        if store.backend == "sqlite":
            with store.db.transaction(read_only=True) as cur:
                assert cur.execute("PRAGMA integrity_check").one()[0] == "ok"
        return [it.id for it in history], head.history_version, row_version, row
    finally:
        store.close()


def _kill_midway(server: Server, marker: Path, point: str, request) -> None:
    """Send `request` on a thread, wait until the store pauses at `point`, then SIGKILL the server."""
    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60.0
    while not (marker.exists() and marker.read_text() == point):
        assert time.monotonic() < deadline, f"the server never paused in {point}:\n{server.log()}"
        assert server.proc.poll() is None, f"server died early:\n{server.log()}"
        time.sleep(0.02)
    server.kill()
    thread.join(timeout=30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_during_append_and_refresh_leaves_the_old_state(tmp_path, backend):
    with fresh_store_url(backend, tmp_path) as db:
        _seed(db)
        key = add_key(db, "acme")
        before = _state(db)
        marker = tmp_path / "paused"
        hooked = {"TAPPER_TEST_DB": db, "TAPPER_TEST_SLOW_WRITE_MS": "60000", "TAPPER_TEST_PAUSE_MARKER": str(marker)}
        new_records = {"records": [{"id": f"new{i}", "text": f"n{i}", "score": 5} for i in range(4)]}

        server = start_server(tmp_path, hooked)
        _kill_midway(server, marker, "append", lambda: _ignore_errors(
            server.call, "POST", "/v1/users/kim/records", new_records, key=key, timeout=90))
        assert _state(db)[:3] == before[:3]  # half of the records were written inside the transaction: none stay
        assert torch.equal(_state(db)[3], OLD_ROW)

        marker.unlink()
        server = start_server(tmp_path, hooked)
        job = server.call("POST", "/v1/users/kim/refresh", key=key).json
        _kill_midway(server, marker, "refresh", lambda: None)
        ids, history_version, row_version, row = _state(db)
        assert (ids, history_version, row_version) == before[:3]
        assert torch.equal(row, OLD_ROW)  # the new bytes were written, the version bump was not: all rolled back

        # SQLite has one server, which fails every unfinished job at startup; replicas on PostgreSQL fail only
        # jobs that stopped moving stale_job_s ago (0 here, so the restart sees the job as dead at once).
        server = start_server(tmp_path, {"TAPPER_TEST_DB": db, "TAPPER_TEST_STALE_JOB_S": "0"})
        try:
            interrupted = server.call("GET", f"/v1/jobs/{job['id']}", key=key).json
            assert interrupted["status"] == "failed" and "interrupted" in interrupted["error"]
            retried = server.call("POST", "/v1/users/kim/records", new_records, key=key).json
            assert retried == {"user_id": "kim", "added": 4, "duplicates": 0, "total": 6}
            again = server.call("POST", "/v1/users/kim/refresh", key=key).json
            deadline = time.monotonic() + 30
            while server.call("GET", f"/v1/jobs/{again['id']}", key=key).json["status"] != "done":
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
        finally:
            server.stop()
        ids, _, row_version, row = _state(db)
        assert len(ids) == 6 and row_version == 2
        assert torch.equal(row, torch.full((FAKE_ROW_SIZE,), 6.0))  # the fake fills the row with the record count


def _ignore_errors(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except OSError:
        pass  # the server was killed under this request: that is the point
