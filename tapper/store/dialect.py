"""The few places where SQLite and PostgreSQL differ, behind one small interface.

Everything else in the store is shared SQL: queries are written with `?` placeholders and translated here,
and each thread gets its own connection (sqlite3 and psycopg connections are not meant to be shared
between threads that run statements at the same time).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORE_FILE_MODE = 0o600  # the store holds users' texts: only its owner may read it
CHECKPOINT_TRIES = 5


class StoreError(RuntimeError):
    """The store cannot do what was asked (bad URL, wrong run, corrupt row...); the message says why."""


@dataclass(frozen=True)
class Dialect:
    name: str  # "sqlite" | "postgresql"
    blob: str  # the binary column type
    lock_row: str  # appended to a SELECT that must lock the user's row until commit ("" where not needed)


SQLITE = Dialect(name="sqlite", blob="BLOB", lock_row="")
POSTGRES = Dialect(name="postgresql", blob="BYTEA", lock_row=" FOR UPDATE")


class Database:
    """Thread-local connections to one database, and transactions that commit whole or not at all."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect = SQLITE
            self._sqlite_path = url.removeprefix("sqlite:///")
            if not self._sqlite_path:
                raise StoreError(f"store URL {url!r} names no file; use sqlite:///path/to/users.db")
            _create_private_file(Path(self._sqlite_path))
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = POSTGRES
            try:
                import psycopg  # noqa: F401  (optional dependency: only PostgreSQL stores need it)
            except ImportError as e:
                raise StoreError('PostgreSQL stores need psycopg 3: pip install "psycopg[binary]"') from e
        else:
            raise StoreError(f"unsupported store URL {url!r}; use sqlite:///path.db or postgresql://...")
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._checkpoint_owed = False  # a checkpoint that readers blocked; retried after the next write

    def _connect(self) -> Any:
        if self.dialect is SQLITE:
            # isolation_level=None: we issue BEGIN ourselves, so a transaction is exactly what we wrap.
            conn = sqlite3.connect(
                self._sqlite_path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transaction survives power loss too, not only a killed process.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Deleted content is overwritten with zeros, not just unlinked from the b-tree (a forgotten user's
            # text must not stay in free space); this SQLite build's default is not relied on.
            if conn.execute("PRAGMA secure_delete=ON").fetchone()[0] != 1:
                conn.close()
                raise StoreError("this SQLite build cannot turn on secure_delete; forgetting users needs it")
        else:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True)
        with self._all_lock:
            if self._closed:
                conn.close()
                raise StoreError(f"the store {self.display_url} is closed")
            self._all.append(conn)
        return conn

    @property
    def display_url(self) -> str:
        """The URL without a password, for messages and logs."""
        scheme, sep, rest = self.url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
        return f"{scheme}{sep}{rest}"

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        # A PostgreSQL connection dies with its server (restart, failover); the next call gets a fresh one.
        if conn is not None and self.dialect is POSTGRES and (conn.closed or conn.broken):
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def sql(self, query: str) -> str:
        return query if self.dialect is SQLITE else query.replace("?", "%s")

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Cursor]:
        """One atomic unit of work; any exception (or a killed process) rolls all of it back.

        A read-only transaction sees one consistent snapshot without blocking writers.
        """
        conn = self._conn()
        if self.dialect is SQLITE:
            # IMMEDIATE takes the write lock up front, so two writers never both read then both write.
            conn.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")
            try:
                yield Cursor(self, conn.cursor())
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if self._checkpoint_owed and not read_only:
                self.checkpoint()
        else:
            with conn.transaction():
                with conn.cursor() as cur:
                    if read_only:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield Cursor(self, cur)

    def checkpoint(self) -> bool:
        """SQLite: copy the whole write-ahead log into the database file and truncate the log to zero bytes,
        so that nothing deleted lives on in the WAL. True when done; False when readers kept it from finishing
        after CHECKPOINT_TRIES tries (each waits up to the 30 s busy timeout). PostgreSQL: nothing to do here."""
        if self.dialect is not SQLITE:
            return True
        conn = self._conn()
        for attempt in range(CHECKPOINT_TRIES):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0:
                self._checkpoint_owed = False
                return True
            time.sleep(0.05 * (attempt + 1))
        self._checkpoint_owed = True
        log.error("could not checkpoint the WAL of %s: readers kept it busy; retried after the next write",
                  self.url)
        return False

    def close(self) -> None:
        """Checkpoint (SQLite) and close every connection; later calls raise StoreError."""
        if self.dialect is SQLITE and not self._closed:
            try:
                self.checkpoint()
            except (sqlite3.Error, StoreError) as e:  # closing must still close the connections
                log.error("final WAL checkpoint of %s failed: %s", self.url, e)
        with self._all_lock:
            self._closed = True
            for conn in self._all:
                try:
                    conn.close()
                except Exception:  # a connection of a dead thread may already be unusable
                    pass
            self._all.clear()
        self._local = threading.local()


class Cursor:
    """A cursor that takes `?` placeholders on both backends."""

    def __init__(self, db: Database, cur: Any) -> None:
        self._db = db
        self._cur = cur

    def execute(self, query: str, params: tuple | list = ()) -> Cursor:
        self._cur.execute(self._db.sql(query), tuple(params))
        return self

    def executemany(self, query: str, rows: list[tuple]) -> None:
        if rows:
            self._cur.executemany(self._db.sql(query), rows)

    def one(self) -> tuple | None:
        return self._cur.fetchone()

    def all(self) -> list[tuple]:
        return list(self._cur.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


def _create_private_file(path: Path) -> None:
    """Create an empty SQLite store file readable by its owner only (SQLite gives its -wal and -shm files the
    same mode); warn about an existing store that others can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STORE_FILE_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("store %s has mode %04o: other users can read it; chmod 600 it (and its -wal/-shm)",
                        path, mode)
        return
    os.close(fd)
