"""An in-memory LRU of users' histories and P_u rows, checked against the store on every use.

Each lookup reads the user's small head row (uid and version counters) first, so a copy cached by this
process is never served after another replica appended, refreshed or deleted: only the parts whose version
moved are reloaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from tapper.data.records import ProfileItem
from tapper.store.user_store import UserStore


@dataclass(frozen=True)
class UserState:
    uid: str
    history_version: int
    history: list[ProfileItem]
    row_version: int
    row: torch.Tensor | None  # None: never refreshed (the engine uses its cold-start row)


class UserStateCache:
    def __init__(self, store: UserStore, max_users: int, row_size: int | None = None) -> None:
        if max_users < 0:
            raise ValueError(f"max_users must be >= 0, got {max_users}")
        self.store = store
        self.max_users = max_users
        self.row_size = row_size
        self._lru: OrderedDict[tuple[str, str], UserState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, tenant: str, user_id: str) -> UserState | None:
        """The user's current state, or None when the store has no such user (the cold-start path)."""
        key = (tenant, user_id)
        head = self.store.user_head(tenant, user_id)
        if head is None:
            self.evict(tenant, user_id)
            return None
        with self._lock:
            cached = self._lru.get(key)
            if cached is not None and cached.uid != head.uid:
                cached = None  # deleted and re-created since: nothing of the old incarnation may be used
            if (
                cached is not None
                and cached.history_version == head.history_version
                and cached.row_version == head.row_version
            ):
                self._lru.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
        if cached is not None and cached.history_version == head.history_version:
            history_version, history = cached.history_version, cached.history
        else:
            history_version, history = self.store.load_history(head.uid)
        if cached is not None and cached.row_version == head.row_version:
            row_version, row = cached.row_version, cached.row
        else:
            row_version, row = self.store.load_row(head.uid, self.row_size)
        state = UserState(head.uid, history_version, history, row_version, row)
        self._put(key, state)
        return state

    def _put(self, key: tuple[str, str], state: UserState) -> None:
        if self.max_users == 0:
            return
        with self._lock:
            self._lru[key] = state
            self._lru.move_to_end(key)
            while len(self._lru) > self.max_users:
                self._lru.popitem(last=False)

    def evict(self, tenant: str, user_id: str) -> None:
        with self._lock:
            self._lru.pop((tenant, user_id), None)
