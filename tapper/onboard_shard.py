"""Onboarding many users at once: N processes (or machines), each fitting the P_u rows of its shard of users and
writing them to the service's shared store.

    tapper onboard --run RUN --questions users.json --db postgresql://... --tenant acme --shard 3/16

A user belongs to shard `shard_of(user_id, N)` (sha256 of the id: the same on every machine), so N commands
with shards 0/N .. N-1/N onboard every user exactly once, with no coordination between them. Each user goes
through the store exactly as a refresh job of `tapper serve` does: its records are appended (ids already
stored are skipped), a job is started and claimed, the row is fitted from the stored history (from the run's
mean row, everything shared frozen) and written together with the job's "done" in one transaction. A running
server therefore sees ordinary rows and jobs, and a rerun of a shard skips every user whose row was fitted on
its current history: a killed shard is resumed by running it again.

SQLite serves one machine (its writers take turns on one file; every write here is a short transaction).
Several machines write to one PostgreSQL database; each process holds one connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tapper.data.records import ProfileItem, Question
from tapper.distributed import shard_of
from tapper.engine import TapperEngine
from tapper.store import NewRecord, RecordConflict, StoreError, UserStore

log = logging.getLogger(__name__)
STALE_JOB_S = 600.0  # an unfinished job this old was left by a killed process: it is failed and replaced


@dataclass
class ShardReport:
    shard: int
    shards: int
    users: int = 0  # users of this shard in the input
    fitted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already fitted on their current history
    busy: list[str] = field(default_factory=list)  # another process holds a live job for them
    failed: dict[str, str] = field(default_factory=dict)  # user -> why (e.g. a record id reused with new content)
    records_added: int = 0
    seconds: float = 0.0

    @property
    def users_per_second(self) -> float:
        return len(self.fitted) / self.seconds if self.seconds > 0 else 0.0


def histories_by_user(questions: Iterable[Question]) -> dict[str, list[ProfileItem]]:
    """Each user's records (a user's several questions share one history; a record id is kept once)."""
    out: dict[str, dict[str, ProfileItem]] = {}
    for q in questions:
        mine = out.setdefault(q.user_id, {})
        for item in q.profile:
            mine.setdefault(item.id, item)
    return {u: list(items.values()) for u, items in out.items()}


def onboard_shard(
    engine: TapperEngine,
    store: UserStore,
    tenant: str,
    histories: dict[str, list[ProfileItem]],
    shard: tuple[int, int] = (0, 1),
    steps: int | None = None,
    stale_after_s: float = STALE_JOB_S,
    on_user: Callable[[int, int], None] | None = None,  # (users done, users in this shard)
) -> ShardReport:
    """Fit and store the rows of the users in `shard` (index, count) of `histories` (see the module docstring)."""
    index, count = shard
    store.bind_row_size(engine.row_size)
    mine = sorted(u for u in histories if shard_of(u, count) == index)
    report = ShardReport(index, count, users=len(mine))
    began = time.perf_counter()
    for done, user_id in enumerate(mine, start=1):
        records = [NewRecord(id=item.id, fields=item.fields, day=item.day) for item in histories[user_id]]
        try:
            report.records_added += store.append_records(tenant, user_id, records).added
        except RecordConflict as e:
            report.failed[user_id] = str(e)
            continue
        head = store.user_head(tenant, user_id)
        if head is None or head.record_count == 0:
            report.failed[user_id] = "no records to fit a row on"
            continue
        if head.row_history_version == head.history_version:
            report.kept.append(user_id)
            continue
        job, created = store.start_job(tenant, user_id, head.uid, total=steps or engine.train_config.onboard_steps,
                                       stale_after_s=stale_after_s)
        if not created or not store.claim_job(job.id):
            report.busy.append(user_id)
            continue
        try:
            version, history = store.load_history(head.uid)
            row = engine.fit_user_row(history, steps=steps)
            store.finish_refresh(job.id, head.uid, row, version)
        except StoreError as e:  # this user's row (e.g. NaN) or this user (deleted meanwhile): the next user
            store.update_job(job.id, status="failed", error=str(e))
            report.failed[user_id] = str(e)
            continue
        except Exception as e:
            store.update_job(job.id, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        report.fitted.append(user_id)
        if on_user:
            on_user(done, len(mine))
    report.seconds = time.perf_counter() - began
    log.info("onboard shard %d/%d: %d users, %d fitted, %d kept, %d busy, %d failed, %.1f s", index, count,
             report.users, len(report.fitted), len(report.kept), len(report.busy), len(report.failed),
             report.seconds)
    return report
