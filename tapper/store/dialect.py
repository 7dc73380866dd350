"""The few places where SQLite and PostgreSQL differ, behind one small interface.

Everything else in the store is shared SQL: queries are written with `?` placeholders and translated here,
and each thread gets its own connection (sqlite3 and psycopg connections are not meant to be shared
between threads that run statements at the same time).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
            Path(self._sqlite_path).parent.mkdir(parents=True, exist_ok=True)
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
        else:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True)
        with self._all_lock:
            self._all.append(conn)
        return conn

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
        else:
            with conn.transaction():
                with conn.cursor() as cur:
                    if read_only:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield Cursor(self, cur)

    def close(self) -> None:
        with self._all_lock:
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
