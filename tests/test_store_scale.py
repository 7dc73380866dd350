"""bench/store_scale.py: a tiny --users run end to end, and the bulk fill read back through the store's API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_serve_support import PG_URL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import store_scale  # noqa: E402  (a bench script: found through bench/ on sys.path)

from tapper.prefix.user_state import dequantize_rows_int8, quantize_rows_int8  # noqa: E402
from tapper.store import UserStateCache, UserStore  # noqa: E402
from tapper.store.rows import decode_row  # noqa: E402

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason="no TAPPER_TEST_PG_URL"))]


def test_int8_rows_round_trip_as_the_user_table_quantizes():
    rows = torch.randn(3, 40) * 0.1
    q, scale = quantize_rows_int8(rows)
    expected = dequantize_rows_int8(q, scale)
    for i, data in enumerate(store_scale.encode_int8(rows)):
        assert len(data) == 40 + 4
        assert torch.equal(decode_row(data, 40, 40, "u"), expected[i])  # what the store reads back


def collect(n_users: int, row_size: int, row_format: str, records: int) -> tuple[list, list]:
    users, recs = [], []
    for u, r in store_scale.fill_batches(n_users, row_size, row_format, records, chunk=7, seed=3):
        users += u
        recs += r
    return users, recs


@pytest.mark.parametrize("row_format", ["float32", "int8"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_bulk_fill_is_read_back_by_the_store(tmp_path, backend_name, row_format):
    backend = (store_scale.SqliteBackend(tmp_path) if backend_name == "sqlite"
               else store_scale.PostgresBackend(PG_URL))
    try:
        store = store_scale.open_store(backend.url, row_format)
        store.bind_row_size(24)
        store.close()
        backend.fill(store_scale.fill_batches(20, 24, row_format, 3, chunk=7, seed=3), lambda done: None)
        users, recs = collect(20, 24, row_format, 3)
        store = store_scale.open_store(backend.url, row_format)
        try:
            assert store.count_users() == 20
            cache = UserStateCache(store, 10, 24)
            for i in (0, 8, 19):
                state = cache.get(store_scale.TENANT, store_scale.user_name(i))
                data = users[i][5]
                row = (decode_row(data, 24, 24, "u") if row_format == "int8"
                       else torch.frombuffer(bytearray(data), dtype=torch.float32))
                assert torch.equal(state.row, row)
                assert [it.fields for it in state.history] == [json.loads(r[4]) for r in recs[3 * i: 3 * i + 3]]
            assert type(store) is UserStore  # the store exactly as it is, for either row format
        finally:
            store.close()
    finally:
        backend.drop()


def test_tiny_run_writes_results_and_removes_the_store(tmp_path):
    stores = tmp_path / "stores"
    cmd = [sys.executable, "bench/store_scale.py", "--users", "300", "--backbone", "tiny", "--backends",
           "sqlite,postgresql" if PG_URL else "sqlite", "--samples", "40", "--batch", "4", "--cache-users", "50",
           "--new-tokens", "2", "--repeats", "1", "--chunk", "64", "--dir", str(stores), "--out", str(tmp_path)]
    if PG_URL:
        cmd += ["--pg-url", PG_URL]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads((tmp_path / "store_scale.json").read_text())
    assert data["users"] == 300 and data["row_size"] == 512 and data["row_bytes"] == 516
    for m in data["backends"]:
        assert m["disk_bytes"]["total"] > 300 * 516
        for key in ("lookup_cold", "lookup_warm", "lookup_cached"):
            assert m[key]["total"]["p50_ms"] > 0
        assert m["rss_bytes"]["cached_users"] == 50
        assert m["generate_path"]["batch"] == 4 and m["generate_path"]["generate_seconds"]["2"] > 0
    assert not list(stores.glob("*.db*"))  # deleted after measuring
    assert "--users 300" in (tmp_path / "store_scale.md").read_text()
