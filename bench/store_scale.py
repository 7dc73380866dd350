"""A store with a million users: fill time, disk size, row lookups cold and warm, the generate path's store
overhead and the serving process's memory, on SQLite and on PostgreSQL.

    # the full run (two stores of ~5 GB each; a dedicated PostgreSQL cluster keeps the shared one quiet)
    export PG=$(TAPPER_PG_DIR=$PWD/runs/store_scale/pg TAPPER_PG_PORT=54339 bash scripts/start_postgres.sh)
    nice -n 10 .venv/bin/python bench/store_scale.py --users 1000000 --pg-url "$PG"
    # a quick check (tiny backbone, 2,000 users, SQLite only)
    .venv/bin/python bench/store_scale.py --users 2000 --backbone tiny --backends sqlite --out /tmp/scale

What it does, per backend:

1. Fill: a fresh store (the store's own schema, made by `UserStore`) gets --users users in one tenant, each
   with a P_u row of the backbone's size (prefix_len x hidden; 8 x 576 = 4,608 numbers for the default
   backbone) and --records-per-user short LaMP-3 history records. Rows are inserted in batched
   transactions: executemany on SQLite, binary COPY on PostgreSQL. The store has no bulk-insert call, so
   the fill writes the store's tables directly; every read below goes through the store's own API.
2. Disk: the SQLite file (+ WAL), or the PostgreSQL schema's tables with their TOAST and indexes.
3. Lookups of --samples random users, each part timed on its own with the store's calls, as a request for
   an uncached user makes them (`UserStateCache.get`: `user_head`, then `load_history`, then `load_row`):
   cold (the store's files evicted from the OS page cache first, so their pages come from disk; PostgreSQL
   may still hold a few in shared_buffers), warm (the same users again, pages in memory) and cached (the
   same users through a `UserStateCache` that holds them: the head check alone, the serve path's hit).
4. Generate path: a batch of --batch users fetched through a fresh `UserStateCache` exactly as
   `POST /v1/generate` prepares a request list (cold pages, then again from the cache), against
   `TapperEngine.generate` of the same batch (the bridge merged, as served; exactly --new-tokens tokens per
   answer) on --threads torch threads. The engine is an untrained run of --backbone (speed does not depend
   on the weights).
5. Memory: the process's resident set size (VmRSS) with the engine loaded and the store open, then with
   --cache-users users held in the cache (the serve default, 10,000).

`--row-format int8` (the default) keeps each row as int8 numbers + one float32 scale (the user table's int8
format, `tapper.prefix.user_state.quantize_rows_int8`): the store itself writes float32 rows today, so this
mode reads rows with a `UserStore` whose `load_row` runs the store's query and decodes int8 instead (the
only part of the store that differs). `--row-format float32` measures the store exactly as it is.
Writes results/store_scale.{json,md} (--out); the store files are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from common import RESULTS, ROOT, Result, Table

from tapper.backbone import load_backbone
from tapper.engine import GenerationRequest, TapperEngine
from tapper.prefix.model import TapperModel
from tapper.prefix.user_state import quantize_rows_int8
from tapper.store import UserStateCache, UserStore
from tapper.train import init_run, resolve_configs

TASK = "LaMP_3"
TENANT = "scale"
INT8_SCALE = struct.Struct("<f")
WORDS = ("great", "value", "broke", "after", "a", "week", "smells", "lovely", "my", "skin", "feels", "soft",
         "too", "sticky", "would", "buy", "again", "cheap", "bottle", "leaked", "works", "fine", "not", "worth",
         "the", "price", "gift", "for", "sister", "color", "fades", "fast", "gentle", "strong", "scent", "dry")


# ---------------------------------------------------------------------------------------------- row formats

def encode_int8(rows: torch.Tensor) -> list[bytes]:
    """Each row as int8 numbers followed by its float32 scale (row ~= q * scale): tapper.store.rows' int8 format,
    encoded a whole batch at a time for the bulk fill."""
    q, scale = quantize_rows_int8(rows)
    q_bytes = q.numpy()
    return [q_bytes[i].tobytes() + INT8_SCALE.pack(float(scale[i])) for i in range(len(q_bytes))]


def encode_float32(rows: torch.Tensor) -> list[bytes]:
    """The store's own format (tapper.store.rows): little-endian float32."""
    arr = np.ascontiguousarray(rows.numpy(), dtype="<f4")
    return [arr[i].tobytes() for i in range(len(arr))]


# ---------------------------------------------------------------------------------------------- fill

def user_name(i: int) -> str:
    return f"user{i:07d}"


def fill_batches(n_users: int, row_size: int, row_format: str, records: int, chunk: int, seed: int
                 ) -> Iterator[tuple[list[tuple], list[tuple]]]:
    """(users rows, records rows) in the store's column order, chunk users at a time; seeded."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) for _ in range(5000)]
    encode = encode_int8 if row_format == "int8" else encode_float32
    now = time.time()
    for start in range(0, n_users, chunk):
        n = min(chunk, n_users - start)
        rows = encode(torch.randn(n, row_size, generator=gen) * 0.02)
        users, recs = [], []
        for j in range(n):
            uid = f"{rng.getrandbits(128):032x}"
            history_version = 1 if records else 0
            users.append((TENANT, user_name(start + j), uid, records, history_version, rows[j], row_size, 1,
                          history_version, now))
            day0 = 19000.0 + rng.random() * 300
            for p in range(records):
                fields = {"text": rng.choice(texts), "score": str(rng.randint(1, 5))}
                recs.append((uid, f"r{p}", p, day0 + 3 * p, json.dumps(fields, separators=(",", ":"))))
        yield users, recs


USER_COLUMNS = ("tenant, user_id, uid, next_position, history_version, row_data, row_size, row_version, "
                "row_history_version, created")
RECORD_COLUMNS = "uid, record_id, position, day, fields"


def fill_sqlite(path: Path, batches: Iterator[tuple[list[tuple], list[tuple]]], progress: Callable[[int], None]
                ) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # the fill only: the store reopens it with synchronous=FULL
        users_sql = f"INSERT INTO users ({USER_COLUMNS}) VALUES ({', '.join('?' * 10)})"
        records_sql = f"INSERT INTO records ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
        done = 0
        for users, recs in batches:
            conn.execute("BEGIN")
            conn.executemany(users_sql, users)
            conn.executemany(records_sql, recs)
            conn.execute("COMMIT")
            done += len(users)
            progress(done)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")
    finally:
        conn.close()


def fill_postgres(url: str, batches: Iterator[tuple[list[tuple], list[tuple]]], progress: Callable[[int], None]
                  ) -> None:
    import psycopg

    user_types = ["text", "text", "text", "int4", "int4", "bytea", "int4", "int4", "int4", "float8"]
    record_types = ["text", "text", "int4", "float8", "text"]
    with psycopg.connect(url) as conn:
        done = 0
        for users, recs in batches:
            with conn.cursor() as cur:
                with cur.copy(f"COPY users ({USER_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(user_types)
                    for row in users:
                        copy.write_row(row)
                if recs:
                    with cur.copy(f"COPY records ({RECORD_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(record_types)
                        for row in recs:
                            copy.write_row(row)
            conn.commit()
            done += len(users)
            progress(done)
        conn.autocommit = True
        conn.execute("ANALYZE users")
        conn.execute("ANALYZE records")
        try:
            conn.execute("CHECKPOINT")  # clean pages, so that the eviction before the cold lookups drops them
        except psycopg.Error:  # not a superuser: the backend's files() finds nothing to evict either
            pass


# ---------------------------------------------------------------------------------------------- backends

class Backend:
    """Where one store lives, how big it is, and how to push its pages out of the OS page cache."""

    name: str
    url: str

    @staticmethod
    def from_spec(spec: dict[str, str]) -> Backend:
        """The same store again, in a child process (`spec()` of the parent's backend)."""
        if spec["backend"] == "sqlite":
            return SqliteBackend(Path(spec["path"]).parent, Path(spec["path"]).name)
        return PostgresBackend(spec["server_url"], spec["schema"])

    def spec(self) -> dict[str, str]:
        raise NotImplementedError

    def fill(self, batches, progress) -> None:
        raise NotImplementedError

    def disk_bytes(self) -> dict[str, int]:
        raise NotImplementedError

    def files(self) -> list[Path]:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def evict(self) -> int:
        """Drop the store's files from the OS page cache (clean pages only: nothing is lost); bytes covered."""
        covered = 0
        for path in self.files():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                covered += os.fstat(fd).st_size
            finally:
                os.close(fd)
        return covered


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, folder: Path, file: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (file or f"scale-{uuid.uuid4().hex[:8]}.db")
        self.url = f"sqlite:///{self.path}"

    def spec(self) -> dict[str, str]:
        return {"backend": self.name, "path": str(self.path)}

    def fill(self, batches, progress) -> None:
        fill_sqlite(self.path, batches, progress)

    def files(self) -> list[Path]:
        return [p for p in (self.path, Path(f"{self.path}-wal")) if p.exists()]

    def disk_bytes(self) -> dict[str, int]:
        return {"total": sum(p.stat().st_size for p in self.files())}

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class PostgresBackend(Backend):
    """A fresh schema on the given server (dropped afterwards), as the store tests do."""

    name = "postgresql"

    def __init__(self, server_url: str, schema: str | None = None) -> None:
        import psycopg

        self.server_url = server_url
        self.schema = schema or f"scale_{uuid.uuid4().hex[:10]}"
        if schema is None:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {self.schema}")
        sep = "&" if "?" in server_url else "?"
        self.url = f"{server_url}{sep}options={quote(f'-csearch_path={self.schema}')}"

    def spec(self) -> dict[str, str]:
        return {"backend": self.name, "server_url": self.server_url, "schema": self.schema}

    def fill(self, batches, progress) -> None:
        fill_postgres(self.url, batches, progress)

    def _query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def disk_bytes(self) -> dict[str, int]:
        out = {}
        for table in ("users", "records"):
            (total, heap, toast, index), = self._query(
                f"SELECT pg_total_relation_size('{table}'), pg_relation_size('{table}'), "
                f"COALESCE(pg_total_relation_size(NULLIF(reltoastrelid, 0)), 0), pg_indexes_size('{table}') "
                f"FROM pg_class WHERE oid = '{self.schema}.{table}'::regclass")
            out[table] = {"total": total, "heap": heap, "toast": toast, "indexes": index}
        out["total"] = sum(v["total"] for v in out.values())
        return out

    def settings(self) -> dict[str, str]:
        return {name: self._query(f"SHOW {name}")[0][0] for name in ("shared_buffers", "server_version")}

    def files(self) -> list[Path]:
        """Every file of this database (tables, TOAST, indexes): found when the server runs on this machine."""
        try:
            (data_dir,), = self._query("SHOW data_directory")
            (db_oid,), = self._query("SELECT oid FROM pg_database WHERE datname = current_database()")
        except Exception:  # not a superuser: nothing can be evicted, and the notes say so
            return []
        folder = Path(data_dir) / "base" / str(db_oid)
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.schema} CASCADE")


# ---------------------------------------------------------------------------------------------- measuring

def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of a list of seconds, in milliseconds."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return 1000 * ordered[rank]


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def time_parts(store: UserStore, users: list[str], row_size: int) -> dict[str, list[float]]:
    """Per user: the three store calls of a cache miss, each timed; `total` is their sum."""
    parts: dict[str, list[float]] = {"head": [], "history": [], "row": [], "total": []}
    for name in users:
        t_head, head = clock(lambda name=name: store.user_head(TENANT, name))
        t_hist, _ = clock(lambda head=head: store.load_history(head.uid))
        t_row, (_, row) = clock(lambda head=head: store.load_row(head.uid, row_size))
        if row is None or row.shape != (row_size,):
            raise SystemExit(f"{name}: the store returned no row of {row_size} numbers")
        for key, value in (("head", t_head), ("history", t_hist), ("row", t_row),
                           ("total", t_head + t_hist + t_row)):
            parts[key].append(value)
    return parts


def summary(parts: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "mean_ms": 1000 * statistics.mean(v)}
            for k, v in parts.items()}


def fill_phase(backend: Backend, args, log: Callable[[str], None]) -> dict[str, Any]:
    """Create the store (the store's own schema and row-size binding) and fill it."""
    row_size = row_size_of(args.backbone)
    store = open_store(backend.url, args.row_format)  # creates the tables, exactly as `tapper serve` does
    store.bind_row_size(row_size)
    store.close()
    began = time.perf_counter()
    last = [began]

    def progress(done: int) -> None:
        if time.perf_counter() - last[0] > 30 or done == args.users:
            last[0] = time.perf_counter()
            log(f"{backend.name}: filled {done:,}/{args.users:,} users ({done / (last[0] - began):,.0f}/s)")

    backend.fill(fill_batches(args.users, row_size, args.row_format, args.records_per_user, args.chunk,
                              args.seed), progress)
    seconds = time.perf_counter() - began
    return {"row_size": row_size, "fill_seconds": seconds, "fill_users_per_second": args.users / seconds}


def measure_phase(backend: Backend, args, log: Callable[[str], None]) -> dict[str, Any]:
    """Lookups, memory and the generate path, in a process that has done nothing else (clean RSS)."""
    out: dict[str, Any] = {}
    _, train_cfg = resolve_configs(TASK, {"backbone": args.backbone}, {"show_progress": False})
    with tempfile.TemporaryDirectory(prefix="tapper-scale-") as work:
        run = init_run(Path(work) / "run", backbone=args.backbone, task=TASK)
        engine = TapperEngine(TapperModel.from_pretrained(run), train_cfg)
    gc.collect()
    row_size = engine.row_size
    out["backbone"] = engine.model.backbone_name
    rss_engine = rss_bytes()
    store = open_store(backend.url, args.row_format)
    try:
        if store.count_users() != args.users:
            raise SystemExit(f"{backend.name}: the store counts {store.count_users()} users, filled {args.users}")
        rng = random.Random(args.seed + 1)
        picked = [user_name(i) for i in rng.sample(range(args.users), args.samples + args.batch)]
        sample, batch = picked[: args.samples], picked[args.samples:]
        others = rng.sample(range(args.users), min(args.users, args.cache_users + len(picked)))
        in_sample = set(picked)
        extra = [name for name in map(user_name, others) if name not in in_sample][: args.cache_users]

        # the serve path's cache, filled to its size: what it costs in memory
        rss_store = rss_bytes()
        cache = UserStateCache(store, args.cache_users, row_size)
        for name in extra:  # none of the users timed below: their lookups stay cold
            cache.get(TENANT, name)
        gc.collect()
        rss_cache = rss_bytes()
        n_cached = len(cache)
        out["rss_bytes"] = {"engine": rss_engine, "engine_and_store": rss_store, "with_cache": rss_cache,
                            "cached_users": n_cached, "per_cached_user": (rss_cache - rss_store) / max(n_cached, 1)}
        log(f"{backend.name}: RSS {rss_store / 2**20:.0f} MiB -> {rss_cache / 2**20:.0f} MiB with "
            f"{n_cached:,} cached users")

        # lookups: cold (evicted pages), warm (pages in memory), cached (the cache's hit path)
        out["evicted_bytes"] = backend.evict()
        cold = time_parts(store, sample, row_size)
        warm = time_parts(store, sample, row_size)
        out["lookup_cold"], out["lookup_warm"] = summary(cold), summary(warm)
        log(f"{backend.name}: lookup p50/p99 cold {pct(cold['total'], 50):.2f}/{pct(cold['total'], 99):.2f} ms, "
            f"warm {pct(warm['total'], 50):.2f}/{pct(warm['total'], 99):.2f} ms")
        for name in sample:
            cache.get(TENANT, name)
        hits = cache.hits
        cached = {"total": [clock(lambda name=name: cache.get(TENANT, name))[0] for name in sample]}
        out["lookup_cached"] = summary(cached) if cache.hits - hits == len(sample) else None

        # the generate path: fetch a batch of users as POST /v1/generate does, then generate it
        backend.evict()
        batch_cache = UserStateCache(store, args.cache_users, row_size)
        t_cold, states = clock(lambda: [batch_cache.get(TENANT, name) for name in batch])
        t_cached = min(clock(lambda: [batch_cache.get(TENANT, name) for name in batch])[0]
                       for _ in range(args.repeats))
        requests = [GenerationRequest(f"{TENANT}/{name}", "What is the score of the following review on a scale "
                                      f"of 1 to 5? review: {' '.join(WORDS[i % 7: i % 7 + 12])}", st.history, st.row)
                    for i, (name, st) in enumerate(zip(batch, states, strict=True))]
        gen = {}
        for n_tok in args.new_tokens:
            engine.model.hf_model.generation_config.min_new_tokens = n_tok
            gen[n_tok] = min(clock(lambda n_tok=n_tok: engine.generate(requests, max_new_tokens=n_tok))[0]
                             for _ in range(args.repeats))
        out["generate_path"] = {
            "batch": len(batch), "fetch_cold_seconds": t_cold, "fetch_cached_seconds": t_cached,
            "generate_seconds": {str(k): v for k, v in gen.items()},
            "overhead_cold": {str(k): t_cold / v for k, v in gen.items()},
            "overhead_cached": {str(k): t_cached / v for k, v in gen.items()},
        }
        log(f"{backend.name}: batch of {len(batch)}: fetch cold {1000 * t_cold:.1f} ms, cached "
            f"{1000 * t_cached:.1f} ms; generate " + ", ".join(f"{k} tokens {v:.2f} s" for k, v in gen.items()))
    finally:
        store.close()
    return out


def open_store(url: str, row_format: str) -> UserStore:
    """The store itself: it reads rows of either format (tapper.store.rows) and writes new ones in row_format."""
    return UserStore(url, row_format=row_format)


def row_size_of(backbone: str) -> int:
    """prefix_len x hidden size: the numbers in one P_u row of a run on this backbone."""
    tcfg, _ = resolve_configs(TASK, {"backbone": backbone})
    return tcfg.prefix_len * load_backbone(backbone).hidden_size


def run_phase(phase: str, backend: Backend, argv: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """One phase in a fresh child process (its memory numbers then describe that phase alone)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        answer = Path(f.name)
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--phase", phase,
               "--phase-store", json.dumps(backend.spec()), "--phase-out", str(answer)]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise SystemExit(f"{backend.name}: the {phase} phase failed (its output is above)")
        return json.loads(answer.read_text())
    finally:
        answer.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--pg-url", default=os.environ.get("TAPPER_PG_URL"),
                    help="a PostgreSQL server (a fresh schema is made and dropped); default $TAPPER_PG_URL")
    ap.add_argument("--row-format", choices=("int8", "float32"), default="int8")
    ap.add_argument("--records-per-user", type=int, default=5)
    ap.add_argument("--backbone", default="default", help="sets the row size and the engine timed")
    ap.add_argument("--samples", type=int, default=1000, help="users looked up cold, warm and cached")
    ap.add_argument("--batch", type=int, default=32, help="users in the generate batch")
    ap.add_argument("--new-tokens", default="2,16", help="answer lengths generated for the batch")
    ap.add_argument("--cache-users", type=int, default=10_000, help="the serve cache's size (its default)")
    ap.add_argument("--repeats", type=int, default=3, help="timings of the batch fetch and generate; fastest kept")
    ap.add_argument("--chunk", type=int, default=5000, help="users per fill transaction")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for generate")
    ap.add_argument("--dir", type=Path, default=ROOT / "runs" / "store_scale", help="where SQLite files go")
    ap.add_argument("--keep", action="store_true", help="keep the stores (default: deleted after measuring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--phase", choices=("fill", "measure"), help=argparse.SUPPRESS)  # a child's job
    ap.add_argument("--phase-store", help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.new_tokens = [int(x) for x in args.new_tokens.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        ap.error(f"unknown backend(s) {sorted(unknown)}")
    if "postgresql" in backends and not args.pg_url:
        ap.error("postgresql needs --pg-url (or $TAPPER_PG_URL): e.g. $(bash scripts/start_postgres.sh)")
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if args.phase:
        backend = Backend.from_spec(json.loads(args.phase_store))
        phase = fill_phase if args.phase == "fill" else measure_phase
        args.phase_out.write_text(json.dumps(phase(backend, args, log)))
        return

    result = Result("store_scale", f"A store with {args.users:,} users: size, lookups, generate-path overhead, "
                    "memory", {})
    argv = sys.argv[1:]
    measured = []
    for name in backends:
        backend = SqliteBackend(args.dir) if name == "sqlite" else PostgresBackend(args.pg_url)
        try:
            m: dict[str, Any] = {"backend": name, **run_phase("fill", backend, argv, log)}
            m["disk_bytes"] = backend.disk_bytes()
            m["disk_bytes_per_user"] = m["disk_bytes"]["total"] / args.users
            if isinstance(backend, PostgresBackend):
                m["server"] = backend.settings()
            log(f"{name}: filled in {m['fill_seconds']:.0f} s, {m['disk_bytes']['total'] / 1e9:.2f} GB on disk")
            m.update(run_phase("measure", backend, argv, log))
            measured.append(m)
        finally:
            if not args.keep:
                backend.drop()
    write_result(result, args, measured)


def write_result(result: Result, args, measured: list[dict[str, Any]]) -> None:
    row_size = measured[0]["row_size"]
    backbone = measured[0]["backbone"]
    row_bytes = row_size + INT8_SCALE.size if args.row_format == "int8" else 4 * row_size
    result.data.update({
        "users": args.users, "row_format": args.row_format, "row_size": row_size, "row_bytes": row_bytes,
        "records_per_user": args.records_per_user, "backbone": backbone,
        "samples": args.samples, "new_tokens": args.new_tokens, "backends": measured,
    })
    gb = 1e9
    result.tables.append(Table(
        f"Fill and size: {args.users:,} users, {args.row_format} rows of {row_size:,} numbers ({row_bytes:,} bytes), "
        f"{args.records_per_user} history records each",
        ["backend", "fill s", "users / s", "disk GB", "bytes / user", "row bytes / user (of it)"],
        [[m["backend"], m["fill_seconds"], m["fill_users_per_second"], m["disk_bytes"]["total"] / gb,
          m["disk_bytes_per_user"], row_bytes] for m in measured]))
    rows = []
    for m in measured:
        for label, key in (("cold", "lookup_cold"), ("warm", "lookup_warm")):
            s = m[key]
            rows.append([m["backend"], label, s["head"]["p50_ms"], s["row"]["p50_ms"], s["row"]["p99_ms"],
                         s["history"]["p50_ms"], s["total"]["p50_ms"], s["total"]["p99_ms"]])
        if m["lookup_cached"]:
            c = m["lookup_cached"]["total"]
            rows.append([m["backend"], "cached (head check only)", "-", "-", "-", "-", c["p50_ms"], c["p99_ms"]])
    result.tables.append(Table(
        f"Lookups of {args.samples:,} random users (ms): the store calls of a cache miss, each timed",
        ["backend", "state", "user_head p50", "load_row p50", "load_row p99", "load_history p50",
         "all three p50", "all three p99"], rows, align_left=2))
    gen_rows = []
    for m in measured:
        g = m["generate_path"]
        for k, secs in g["generate_seconds"].items():
            gen_rows.append([m["backend"], int(k), 1000 * g["fetch_cold_seconds"], 1000 * g["fetch_cached_seconds"],
                             1000 * secs, 100 * g["overhead_cold"][k], 100 * g["overhead_cached"][k]])
    result.tables.append(Table(
        f"Generate path: fetching a batch of {args.batch} users' state (as POST /v1/generate does) vs "
        f"TapperEngine.generate of that batch ({backbone}, {args.threads} torch thread(s))",
        ["backend", "new tokens", "fetch cold ms", "fetch cached ms", "generate ms", "cold fetch / generate %",
         "cached fetch / generate %"], gen_rows))
    result.tables.append(Table(
        "Serving process memory (VmRSS of a fresh process)",
        ["backend", "engine loaded MiB", "+ store open MiB", f"+ {args.cache_users:,} users cached MiB",
         "KiB per cached user"],
        [[m["backend"], m["rss_bytes"]["engine"] / 2**20, m["rss_bytes"]["engine_and_store"] / 2**20,
          m["rss_bytes"]["with_cache"] / 2**20, m["rss_bytes"]["per_cached_user"] / 1024] for m in measured]))
    notes = [
        "Cold: the store's files were evicted from the OS page cache (posix_fadvise DONTNEED after a checkpoint) "
        "before the first lookup, so every page a lookup needs comes from disk once; pages read by earlier "
        "lookups (the upper levels of the indexes) stay cached, as they would in a server. PostgreSQL keeps its "
        "own shared_buffers, which the eviction cannot reach.",
        "Warm: the same users again, their pages in memory, but not in tapper's cache. Cached: the serve path's "
        "cache hit, which still reads the user's head row from the store to check versions.",
        "A cache miss makes three store calls, each its own transaction (user_head, load_history, load_row); "
        "each is timed alone and `all three` is their sum.",
        "The cache holds decoded float32 rows (and the parsed history), whatever the store's row format. "
        "Each backend is filled by one child process and measured by another, so the memory numbers are "
        "those of a process that loaded the engine, opened the store and filled the cache, and nothing else.",
        "Timings share the machine with whatever else runs on it (load average in the header); a PostgreSQL "
        "round trip on loopback is slower when the server and the client share a busy core.",
    ]
    if args.row_format == "int8":
        notes.append("Rows are int8 + a float32 scale. The store writes float32 rows today "
                     "(tapper/store/rows.py); this run reads them with a UserStore whose load_row runs the same "
                     "query and decodes int8. Everything else is the store's own code.")
    for m in measured:
        if m["backend"] == "postgresql":
            d = m["disk_bytes"]["users"]
            server = m["server"]
            notes.append(f"PostgreSQL ({server['server_version']}, shared_buffers {server['shared_buffers']}): "
                         f"users table {d['total'] / gb:.2f} GB, of which TOAST {d['toast'] / gb:.2f} GB (rows "
                         f"over 2 kB are kept out of line), heap {d['heap'] / gb:.2f} GB, indexes "
                         f"{d['indexes'] / gb:.2f} GB; "
                         f"records table {m['disk_bytes']['records']['total'] / gb:.2f} GB. Evicted "
                         f"{m['evicted_bytes'] / gb:.2f} GB of files before the cold lookups.")
        else:
            notes.append(f"SQLite: evicted {m['evicted_bytes'] / gb:.2f} GB of files before the cold lookups.")
    result.notes += notes
    result.write_and_print(args.out)


if __name__ == "__main__":
    main()
