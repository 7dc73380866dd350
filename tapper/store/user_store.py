"""The persistent user state of a service: API keys, each user's history records, P_u rows and refresh jobs.

Every change is one transaction, so a process killed at any point leaves either the old or the new state.
The same code runs on SQLite (embedded default, WAL mode) and PostgreSQL (several replicas on one database).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from tapper.data.records import ProfileItem
from tapper.store.crash_hooks import pause_midway
from tapper.store.dialect import Cursor, Database, StoreError
from tapper.store.rows import ROW_FORMATS, decode_row, encode_row
from tapper.store.schema import SCHEMA_VERSION, schema_statements

JOB_ACTIVE = ("queued", "running")
_ACTIVE_SQL = "(" + ", ".join(f"'{status}'" for status in JOB_ACTIVE) + ")"


class RecordConflict(StoreError):
    """A record id that is already stored was sent again with different content."""


class UserGone(StoreError):
    """The user was deleted (or re-created) while an operation on it was running."""


@dataclass(frozen=True)
class NewRecord:
    id: str
    fields: dict[str, Any]
    day: float | None


@dataclass(frozen=True)
class AppendResult:
    added: int
    duplicates: int  # ids already stored with identical content (a retried request)
    total: int  # records the user has now


@dataclass(frozen=True)
class UserHead:
    """The small part of a user's state that tells whether a cached copy is still current."""

    uid: str
    history_version: int
    row_version: int
    record_count: int
    row_history_version: int | None  # the history version the current row was fitted on


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    user_id: str
    uid: str
    status: str  # queued | running | done | failed
    step: int
    total: int
    loss: float | None
    error: str | None
    created: float
    updated: float


def _canonical(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def order_history(items: list[ProfileItem]) -> list[ProfileItem]:
    """By (day, position) when every record is dated; in posting order when any date is missing."""
    if all(item.day is not None for item in items):
        return sorted(items, key=lambda it: (it.day, it.position))
    return sorted(items, key=lambda it: it.position)


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str  # the first 12 hex digits of the key's SHA-256: names a key without revealing it
    tenant: str
    created: float


KEY_ID_CHARS = 12


class UserStore:
    def __init__(self, url: str, row_format: str = "float32") -> None:
        """`row_format`: how P_u rows fitted from now on are written, "float32" (exact) or "int8" (a quarter of
        the bytes, per-row scale; tapper.store.rows). Rows of either format are read back."""
        if row_format not in ROW_FORMATS:
            raise ValueError(f"unknown row format {row_format!r}; known: {', '.join(ROW_FORMATS)}")
        self.row_format = row_format
        self.db = Database(url)
        with self.db.transaction() as cur:
            for statement in schema_statements(self.db.dialect):
                cur.execute(statement)
            found = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").one()
            if found is None:
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(found[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.db.display_url} has schema version {found[0]}, this code reads {SCHEMA_VERSION}"
                )

    @property
    def backend(self) -> str:
        return self.db.dialect.name

    def close(self) -> None:
        """Checkpoint the WAL (SQLite) and close every connection; a closed store refuses further calls."""
        self.db.close()

    # ---- run binding -------------------------------------------------------------------------------------

    def bind_row_size(self, row_size: int) -> None:
        """Remember the run's row size on first use; refuse a store that holds rows of another size."""
        with self.db.transaction() as cur:
            found = cur.execute("SELECT value FROM meta WHERE key = 'row_size'").one()
            if found is None:
                cur.execute("INSERT INTO meta (key, value) VALUES ('row_size', ?)", (str(row_size),))
            elif int(found[0]) != row_size:
                raise StoreError(
                    f"store {self.db.display_url} holds P_u rows of {found[0]} numbers, but the engine's rows have "
                    f"{row_size}: it belongs to another run (use a fresh --db for this run)"
                )

    # ---- API keys -----------------------------------------------------------------------------------------

    def add_api_key(self, tenant: str, key_hash: str) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO api_keys (key_hash, tenant, created) VALUES (?, ?, ?)",
                (key_hash, tenant, time.time()),
            )

    def tenant_for_key(self, key_hash: str) -> str | None:
        with self.db.transaction(read_only=True) as cur:
            found = cur.execute("SELECT tenant FROM api_keys WHERE key_hash = ?", (key_hash,)).one()
        return None if found is None else str(found[0])

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Every key (or a tenant's), oldest first, by id; the keys themselves were never stored."""
        only = "" if tenant is None else " WHERE tenant = ?"
        with self.db.transaction(read_only=True) as cur:
            rows = cur.execute(f"SELECT key_hash, tenant, created FROM api_keys{only} ORDER BY created, key_hash",
                               () if tenant is None else (tenant,)).all()
        return [ApiKeyInfo(str(h)[:KEY_ID_CHARS], str(t), float(c)) for h, t, c in rows]

    def revoke_api_keys(self, key_hash: str | None = None, key_id: str | None = None,
                        tenant: str | None = None) -> list[ApiKeyInfo]:
        """Delete one key (by its hash, or its id: a unique prefix of the hash, at least 8 hex digits) or every
        key of a tenant; returns what was revoked. A key id matching several keys revokes none (ValueError)."""
        if sum(x is not None for x in (key_hash, key_id, tenant)) != 1:
            raise ValueError("name exactly one of: a key, a key id, a tenant")
        if key_id is not None:
            key_id = key_id.strip().lower()
            if len(key_id) < 8 or any(c not in "0123456789abcdef" for c in key_id):
                raise ValueError(f"key id {key_id!r}: give at least 8 hex digits (as `list-keys` shows them)")
        with self.db.transaction() as cur:
            if key_hash is not None:
                rows = cur.execute("SELECT key_hash, tenant, created FROM api_keys WHERE key_hash = ?",
                                   (key_hash,)).all()
            elif key_id is not None:
                rows = cur.execute("SELECT key_hash, tenant, created FROM api_keys WHERE key_hash LIKE ?",
                                   (key_id + "%",)).all()
                if len(rows) > 1:
                    raise ValueError(f"key id {key_id!r} matches {len(rows)} keys: give more digits")
            else:
                rows = cur.execute("SELECT key_hash, tenant, created FROM api_keys WHERE tenant = ?",
                                   (tenant,)).all()
            for h, _, _ in rows:
                cur.execute("DELETE FROM api_keys WHERE key_hash = ?", (h,))
        return [ApiKeyInfo(str(h)[:KEY_ID_CHARS], str(t), float(c)) for h, t, c in rows]

    # ---- users and records --------------------------------------------------------------------------------

    def append_records(self, tenant: str, user_id: str, records: list[NewRecord]) -> AppendResult:
        """Add records in one transaction; ids already stored with the same content are skipped.

        Raises RecordConflict (and stores nothing) when an id is stored with different content, or appears
        twice in the batch with different content.
        """
        batch: dict[str, tuple[str, float | None]] = {}
        for rec in records:
            content = (_canonical(rec.fields), rec.day)
            if rec.id in batch and batch[rec.id] != content:
                raise RecordConflict(
                    f"record id {rec.id!r} appears twice in the request with different content"
                )
            batch[rec.id] = content
        lock = self.db.dialect.lock_row
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO users (tenant, user_id, uid, next_position, history_version, row_version, "
                "created) VALUES (?, ?, ?, 0, 0, 0, ?) ON CONFLICT (tenant, user_id) DO NOTHING",
                (tenant, user_id, uuid.uuid4().hex, time.time()),
            )
            uid, next_position, version = cur.execute(
                "SELECT uid, next_position, history_version FROM users "
                f"WHERE tenant = ? AND user_id = ?{lock}",
                (tenant, user_id),
            ).one()
            stored = self._stored_content(cur, uid, list(batch))
            new_rows: list[tuple] = []
            duplicates = 0
            for rid, (fields_json, day) in batch.items():
                if rid in stored:
                    if stored[rid] != (fields_json, day):
                        raise RecordConflict(
                            f"record id {rid!r} of user {user_id!r} is already stored with different "
                            "content; record ids are immutable (use a new id)"
                        )
                    duplicates += 1
                    continue
                new_rows.append((uid, rid, next_position + len(new_rows), day, fields_json))
            if new_rows:
                half = len(new_rows) // 2
                insert = "INSERT INTO records (uid, record_id, position, day, fields) VALUES (?, ?, ?, ?, ?)"
                cur.executemany(insert, new_rows[:half])
                pause_midway("append")
                cur.executemany(insert, new_rows[half:])
                cur.execute(
                    "UPDATE users SET next_position = ?, history_version = ? WHERE uid = ?",
                    (next_position + len(new_rows), version + 1, uid),
                )
            total = cur.execute("SELECT COUNT(*) FROM records WHERE uid = ?", (uid,)).one()[0]
        in_batch_repeats = len(records) - len(batch)
        return AppendResult(added=len(new_rows), duplicates=duplicates + in_batch_repeats, total=total)

    @staticmethod
    def _stored_content(cur: Cursor, uid: str, ids: list[str]) -> dict[str, tuple[str, float | None]]:
        found: dict[str, tuple[str, float | None]] = {}
        chunk = 500  # stays far below SQLite's bound-parameter limit
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            marks = ", ".join("?" for _ in part)
            rows = cur.execute(
                f"SELECT record_id, fields, day FROM records WHERE uid = ? AND record_id IN ({marks})",
                [uid, *part],
            ).all()
            found.update({rid: (fields, day) for rid, fields, day in rows})
        return found

    def user_head(self, tenant: str, user_id: str) -> UserHead | None:
        with self.db.transaction(read_only=True) as cur:
            return self._head(cur, tenant, user_id)

    @staticmethod
    def _head(cur: Cursor, tenant: str, user_id: str) -> UserHead | None:
        found = cur.execute(
            "SELECT uid, history_version, row_version, next_position, row_history_version FROM users "
            "WHERE tenant = ? AND user_id = ?",
            (tenant, user_id),
        ).one()
        if found is None:
            return None
        uid, history_version, row_version, _, row_history_version = found
        count = cur.execute("SELECT COUNT(*) FROM records WHERE uid = ?", (uid,)).one()[0]
        return UserHead(uid, history_version, row_version, count, row_history_version)

    def load_history(self, uid: str) -> tuple[int, list[ProfileItem]]:
        """(history version, records in model order) read in one snapshot."""
        with self.db.transaction(read_only=True) as cur:
            found = cur.execute("SELECT history_version FROM users WHERE uid = ?", (uid,)).one()
            if found is None:
                raise UserGone(f"user {uid} no longer exists")
            rows = cur.execute(
                "SELECT record_id, fields, day, position FROM records WHERE uid = ? ORDER BY position", (uid,)
            ).all()
        items = [
            ProfileItem(id=rid, fields=json.loads(fields), day=day, position=pos)
            for rid, fields, day, pos in rows
        ]
        return int(found[0]), order_history(items)

    def load_row(self, uid: str, expected_size: int | None = None) -> tuple[int, torch.Tensor | None]:
        """(row version, row or None when the user has never been refreshed)."""
        with self.db.transaction(read_only=True) as cur:
            found = cur.execute(
                "SELECT user_id, row_version, row_data, row_size FROM users WHERE uid = ?", (uid,)
            ).one()
        if found is None:
            raise UserGone(f"user {uid} no longer exists")
        user_id, version, data, size = found
        if data is None:
            return int(version), None
        return int(version), decode_row(data, int(size), expected_size, f"user {user_id!r}")

    def delete_user(self, tenant: str, user_id: str) -> bool:
        """Forget a user: records, row and jobs go in one transaction. False if there was no such user.

        On SQLite the deleted bytes are zeroed in the database file (secure_delete) and the write-ahead log,
        which still holds the old pages, is checkpointed and truncated before this returns, so none of the
        store's files keeps the user's text, row or id. On PostgreSQL the rows are gone for every query at
        once; their bytes stay in the table files until VACUUM and in the server's WAL (docs/serving.md).
        """
        with self.db.transaction() as cur:
            found = cur.execute(
                "SELECT uid FROM users WHERE tenant = ? AND user_id = ?", (tenant, user_id)
            ).one()
            if found is None:
                return False
            uid = found[0]
            cur.execute("DELETE FROM records WHERE uid = ?", (uid,))
            cur.execute("DELETE FROM jobs WHERE uid = ?", (uid,))
            cur.execute("DELETE FROM users WHERE uid = ?", (uid,))
        self.db.checkpoint()
        return True

    def count_users(self) -> int:
        with self.db.transaction(read_only=True) as cur:
            return int(cur.execute("SELECT COUNT(*) FROM users").one()[0])

    # ---- refresh jobs -------------------------------------------------------------------------------------

    def start_job(
        self, tenant: str, user_id: str, uid: str, total: int, stale_after_s: float | None = None
    ) -> tuple[Job, bool]:
        """(job, created): an unfinished job of the same user is returned instead of starting a second one,
        unless it has not moved for `stale_after_s` seconds (its server died): then it is failed and replaced."""
        with self.db.transaction() as cur:
            if stale_after_s is not None:
                self._fail_stale(cur, stale_after_s, uid)
            active = self._active_job(cur, uid)
            if active is not None:
                return active, False
            now = time.time()
            job_id = uuid.uuid4().hex
            cur.execute(
                "INSERT INTO jobs (id, tenant, user_id, uid, status, step, total, loss, error, created, "
                "updated) VALUES (?, ?, ?, ?, 'queued', 0, ?, NULL, NULL, ?, ?)",
                (job_id, tenant, user_id, uid, total, now, now),
            )
            return self._job(cur, job_id), True

    def claim_job(self, job_id: str) -> bool:
        """queued -> running; False when the job is gone or no longer queued (failed as stale, deleted)."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE jobs SET status = 'running', updated = ? WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def active_job(self, uid: str) -> Job | None:
        """The user's queued or running job, if any."""
        with self.db.transaction(read_only=True) as cur:
            return self._active_job(cur, uid)

    def _active_job(self, cur: Cursor, uid: str) -> Job | None:
        found = cur.execute(f"SELECT id FROM jobs WHERE uid = ? AND status IN {_ACTIVE_SQL}", (uid,)).one()
        return None if found is None else self._job(cur, found[0])

    def update_job(
        self, job_id: str, *, status: str, step: int | None = None, total: int | None = None,
        loss: float | None = None, error: str | None = None,
    ) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE jobs SET status = ?, step = COALESCE(?, step), total = COALESCE(?, total), "
                "loss = COALESCE(?, loss), error = COALESCE(?, error), updated = ? WHERE id = ?",
                (status, step, total, loss, error, time.time(), job_id),
            )

    def get_job(self, tenant: str, job_id: str) -> Job | None:
        with self.db.transaction(read_only=True) as cur:
            job = self._job(cur, job_id)
        return job if job is not None and job.tenant == tenant else None

    @staticmethod
    def _job(cur: Cursor, job_id: str) -> Job | None:
        found = cur.execute(
            "SELECT id, tenant, user_id, uid, status, step, total, loss, error, created, updated FROM jobs "
            "WHERE id = ?",
            (job_id,),
        ).one()
        return None if found is None else Job(*found)

    def finish_refresh(self, job_id: str, uid: str, row: torch.Tensor, history_version: int) -> int:
        """Store the fitted row (in the store's row format) and mark the job done, atomically; returns the new
        row version."""
        data, size = encode_row(row, self.row_format)
        with self.db.transaction() as cur:
            found = cur.execute(
                f"SELECT row_version FROM users WHERE uid = ?{self.db.dialect.lock_row}", (uid,)
            ).one()
            if found is None:
                raise UserGone("the user was deleted while its row was being fitted")
            cur.execute("UPDATE users SET row_data = ?, row_size = ? WHERE uid = ?", (data, size, uid))
            pause_midway("refresh")
            version = int(found[0]) + 1
            cur.execute(
                "UPDATE users SET row_version = ?, row_history_version = ? WHERE uid = ?",
                (version, history_version, uid),
            )
            cur.execute(
                "UPDATE jobs SET status = 'done', step = total, updated = ? WHERE id = ?",
                (time.time(), job_id),
            )
        return version

    def fail_stale_jobs(self, older_than_s: float) -> int:
        """Mark unfinished jobs not updated for `older_than_s` seconds as failed (their server died)."""
        with self.db.transaction() as cur:
            return self._fail_stale(cur, older_than_s)

    @staticmethod
    def _fail_stale(cur: Cursor, older_than_s: float, uid: str | None = None) -> int:
        now = time.time()
        only_user = "" if uid is None else " AND uid = ?"
        cur.execute(
            f"UPDATE jobs SET status = 'failed', error = ?, updated = ? "
            f"WHERE status IN {_ACTIVE_SQL} AND updated <= ?{only_user}",
            ("interrupted: the server stopped before the job finished", now, now - older_than_s,
             *(() if uid is None else (uid,))),
        )
        return max(cur.rowcount, 0)
