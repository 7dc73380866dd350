"""The store's tables: one schema for SQLite and PostgreSQL (only the binary column type differs).

Users are namespaced by tenant. Each user also gets a random `uid` when first created: records, the P_u row
and jobs hang off the uid, so a refresh that finishes after the user was deleted (and maybe re-created under
the same name) can never write into the new incarnation.
"""

from __future__ import annotations

from tapper.store.dialect import Dialect

SCHEMA_VERSION = 1


def schema_statements(dialect: Dialect) -> list[str]:
    return [
        """CREATE TABLE IF NOT EXISTS meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS api_keys (
            key_hash TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS users (
            tenant TEXT NOT NULL,
            user_id TEXT NOT NULL,
            uid TEXT NOT NULL UNIQUE,
            next_position INTEGER NOT NULL,
            history_version INTEGER NOT NULL,
            row_data {dialect.blob},
            row_size INTEGER,
            row_version INTEGER NOT NULL,
            row_history_version INTEGER,
            created DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, user_id))""",
        """CREATE TABLE IF NOT EXISTS records (
            uid TEXT NOT NULL REFERENCES users (uid) ON DELETE CASCADE,
            record_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            day DOUBLE PRECISION,
            fields TEXT NOT NULL,
            PRIMARY KEY (uid, record_id))""",
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            user_id TEXT NOT NULL,
            uid TEXT NOT NULL,
            status TEXT NOT NULL,
            step INTEGER NOT NULL,
            total INTEGER NOT NULL,
            loss DOUBLE PRECISION,
            error TEXT,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS jobs_by_uid ON jobs (uid)",
    ]
