"""Refresh jobs: re-fit one user's P_u row from the stored history on a background thread.

The job's progress is written to the store (so any replica can answer GET /v1/jobs/{id}); the new row and
the job's "done" land in one transaction, so a crash leaves the old row and an unfinished job, never a half
row. One job runs at a time; a bounded number may wait.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tapper.engine import TapperEngine
from tapper.serve.metrics import ServeMetrics
from tapper.store import Job, UserGone, UserStateCache, UserStore

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # how often a running fit writes its step/loss to the store


class TooManyJobs(RuntimeError):
    pass


class NothingToFit(RuntimeError):
    pass


class RefreshJobs:
    def __init__(
        self, engine: TapperEngine, store: UserStore, cache: UserStateCache, metrics: ServeMetrics,
        max_pending: int, stale_after_s: float,
    ) -> None:
        self.engine, self.store, self.cache, self.metrics = engine, store, cache, metrics
        self.max_pending = max_pending
        self.stale_after_s = stale_after_s
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapper-refresh")

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, tenant: str, user_id: str) -> Job | None:
        """The job refreshing this user (a new one, or the one already running); None if no such user."""
        head = self.store.user_head(tenant, user_id)
        if head is None:
            return None
        if head.record_count == 0:
            raise NothingToFit(f"user {user_id!r} has no records to fit a row on")
        with self._lock:
            if self._pending >= self.max_pending:
                running = self.store.active_job(head.uid)  # a repeated refresh is not new work
                if running is not None:
                    return running
                raise TooManyJobs(f"{self._pending} refresh jobs are already queued or running")
            job, created = self.store.start_job(tenant, user_id, head.uid, total=0,
                                                stale_after_s=self.stale_after_s)
            if created:
                self._pending += 1
                self._executor.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        try:
            self._fit(job)
            self.metrics.jobs.inc("done")
        except UserGone:
            self.metrics.jobs.inc("deleted")  # the job row went with the user; nothing left to report
        except Exception:  # noqa: BLE001  (the job reports the failure; the server keeps serving)
            # Like a 500, the client learns only that it failed; the log holds why, under the job's id.
            log.exception("refresh job %s failed", job.id)
            self.metrics.jobs.inc("failed")
            self.store.update_job(job.id, status="failed", error=f"internal error (the server log has job {job.id})")
        finally:
            self.cache.evict(job.tenant, job.user_id)
            with self._lock:
                self._pending -= 1

    def _fit(self, job: Job) -> None:
        if not self.store.claim_job(job.id):
            raise UserGone("the job was failed as stale or deleted with its user before it started")
        history_version, history = self.store.load_history(job.uid)
        last_write = 0.0

        def progress(step: int, total: int, loss: float) -> None:
            nonlocal last_write
            now = time.monotonic()
            if now - last_write >= PROGRESS_EVERY_S or step >= total:
                last_write = now
                self.store.update_job(job.id, status="running", step=step, total=total, loss=float(loss))

        row = self.engine.fit_user_row(history, progress=progress)
        if row.numel() != self.engine.row_size:
            raise RuntimeError(f"engine returned a row of {row.numel()} numbers, expected {self.engine.row_size}")
        self.store.finish_refresh(job.id, job.uid, row, history_version)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
