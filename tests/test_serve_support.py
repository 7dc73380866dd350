"""Shared by the serve tests: a small deterministic fake engine, and a real server process on loopback.

The fake follows TapperEngine's interface so the service can be tested without a model:
- generate: output "sum=<row sum>" ("cold" without a row); record_ids are the 3 latest records dated no
  later than the query (all records when the query has no date), newest first. An input containing "BOOM"
  raises, to test that one bad request fails alone.
- fit_user_row: FAKE_FIT_STEPS steps of FAKE_FIT_DELAY_MS each; the row is filled with the record count. A
  record whose text contains "BOOM" makes it raise.
- FAKE_BLOCK_FILE: while that file exists, generate and fit_user_row wait (at most 60 s), so a test can
  hold the engine busy, fill the queue, and then release it.

The server is `uvicorn test_serve_support:app_from_env --factory`, configured by environment variables,
so each test decides the store, the limits and the test-only store hooks of its own server process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import torch

from tapper.data.records import ProfileItem
from tapper.engine import GenerationRequest, GenerationResult

TESTS_DIR = Path(__file__).resolve().parent
FAKE_ROW_SIZE = 8
FAKE_TASK = "LaMP_3"
PG_URL = os.environ.get("TAPPER_TEST_PG_URL")


@contextmanager
def fresh_store_url(backend: str, tmp: Path) -> Iterator[str]:
    """An empty store: a new SQLite file, or a new PostgreSQL schema (dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'users-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class FakeEngine:
    row_size = FAKE_ROW_SIZE
    task = FAKE_TASK

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate(self, requests: list[GenerationRequest], max_new_tokens: int | None = None):
        _wait_while_blocked()
        if any("BOOM" in r.input for r in requests):
            raise RuntimeError("fake engine asked to fail")
        self.batches.append(len(requests))
        out = []
        for r in requests:
            usable = [it for it in r.history if r.query_day is None or (it.day is not None and it.day <= r.query_day)]
            ids = [it.id for it in reversed(usable)][:3]
            text = "cold" if r.user_row is None else f"sum={float(r.user_row.sum()):.1f}"
            path = "cold_start" if r.user_row is None else "personalized"
            out.append(GenerationResult(output=text, raw=f"{text} ({len(requests)} in batch)", record_ids=ids,
                                        path=path))
        return out

    def fit_user_row(self, history: list[ProfileItem], *, steps=None, init=None, progress=None) -> torch.Tensor:
        _wait_while_blocked()
        if any("BOOM" in item.text for item in history):
            raise RuntimeError("fake fit asked to fail")
        total = steps or int(os.environ.get("FAKE_FIT_STEPS", "4"))
        delay = float(os.environ.get("FAKE_FIT_DELAY_MS", "0")) / 1000.0
        for step in range(1, total + 1):
            time.sleep(delay)
            if progress is not None:
                progress(step, total, 1.0 / step)
        return torch.full((FAKE_ROW_SIZE,), float(len(history)))

    def default_row(self) -> torch.Tensor:
        return torch.zeros(FAKE_ROW_SIZE)


def _wait_while_blocked() -> None:
    block = os.environ.get("FAKE_BLOCK_FILE")
    deadline = time.monotonic() + 60.0
    while block and Path(block).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def app_from_env():
    """uvicorn factory: a server over the fake engine, configured by TAPPER_TEST_* variables."""
    from tapper.data.tasks import get_task
    from tapper.serve import ServeConfig, create_app
    from tapper.store import UserStore

    config = ServeConfig(
        max_batch=int(os.environ.get("TAPPER_TEST_MAX_BATCH", "16")),
        max_wait_ms=float(os.environ.get("TAPPER_TEST_MAX_WAIT_MS", "10")),
        queue_size=int(os.environ.get("TAPPER_TEST_QUEUE_SIZE", "256")),
        max_body_bytes=int(os.environ.get("TAPPER_TEST_MAX_BODY", str(4 * 1024 * 1024))),
        max_pending_jobs=int(os.environ.get("TAPPER_TEST_MAX_JOBS", "16")),
        stale_job_s=float(os.environ.get("TAPPER_TEST_STALE_JOB_S", "600")),
        metrics_key=os.environ.get("TAPPER_TEST_METRICS_KEY"),
    )
    return create_app(FakeEngine(), UserStore(os.environ["TAPPER_TEST_DB"]), get_task(FAKE_TASK), config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> object:
        return self.body


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    log_path: Path

    def call(self, method: str, path: str, body: object = None, key: str | None = None,
             raw: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
        """One HTTP request with only the standard library (the server under test owns the event loop)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return Reply(resp.status, _decode(resp.read(), resp.headers), dict(resp.headers))
        except urllib.error.HTTPError as e:
            return Reply(e.code, _decode(e.read(), e.headers), dict(e.headers))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _decode(data: bytes, headers) -> object:
    if "json" in (headers.get("content-type") or ""):
        return json.loads(data) if data else None
    return data.decode("utf-8", errors="replace")


def start_server(tmp: Path, env: dict[str, str], argv: list[str] | None = None, ready_s: float = 120.0) -> Server:
    """Start a server process on a free loopback port and wait (bounded) until /healthz answers."""
    port = free_port()
    if argv is None:
        argv = [sys.executable, "-m", "uvicorn", "test_serve_support:app_from_env", "--factory",
                "--app-dir", str(TESTS_DIR), "--log-level", "warning"]
    argv = [*argv, "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if server.call("GET", "/healthz", timeout=2).status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"server not ready after {ready_s} s:\n{server.log()}")


def add_key(db_url: str, tenant: str) -> str:
    from tapper.serve import create_api_key
    from tapper.store import UserStore

    store = UserStore(db_url)
    try:
        return create_api_key(store, tenant)
    finally:
        store.close()


def serve_fake_main(argv: list[str] | None = None) -> None:
    """The fake-engine app run by `tapper serve`'s own loop (tapper.cli.serve.serve_app): signals, store close,
    logging and exit status as in production. Started as FAKE_SERVE_ARGV + ["--host", h, "--port", p]."""
    import argparse

    from tapper.cli.serve import serve_app

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = app_from_env()
    serve_app(app, app.state.store, host=args.host, port=args.port)


FAKE_SERVE_ARGV = [sys.executable, "-c",
                   f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import test_serve_support as s; "
                   "s.serve_fake_main()"]
