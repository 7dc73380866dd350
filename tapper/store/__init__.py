"""The user-state store of `tapper serve`: SQLite by default, PostgreSQL by URL, one schema and code path."""

from tapper.store.cache import UserState, UserStateCache
from tapper.store.dialect import StoreError
from tapper.store.rows import ROW_FORMATS, decode_row, encode_row
from tapper.store.user_store import (
    ApiKeyInfo,
    AppendResult,
    Job,
    NewRecord,
    RecordConflict,
    UserGone,
    UserHead,
    UserStore,
    order_history,
)

__all__ = [
    "ROW_FORMATS", "ApiKeyInfo", "AppendResult", "Job", "NewRecord", "RecordConflict", "StoreError", "UserGone",
    "UserHead", "UserState", "UserStateCache", "UserStore", "decode_row", "encode_row", "order_history",
]
