"""Micro-batching: concurrent generate requests from different users share one engine forward pass.

Requests wait in a bounded queue. One worker takes the first waiting request, then gathers more for at
most `max_wait_ms` or until `max_batch` are in hand, and runs them as one batch on a dedicated thread (so
the event loop keeps accepting requests meanwhile). A full queue refuses new work at once (the API answers
503 + Retry-After) instead of growing without bound. max_batch=1 turns batching off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFull(RuntimeError):
    """No room for the request(s) in the generate queue right now."""


class LargerThanQueue(RuntimeError):
    """More requests in one call than the queue can ever hold."""


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        on_batch: Callable[[int], None] | None = None,
        on_batch_done: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch  # (size) as a batch goes to the engine
        self.on_batch_done = on_batch_done  # (size, seconds the engine took)
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapper-batch")
        self._worker = asyncio.create_task(self._run(), name="tapper-micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Results in the order of `items`; all of them are queued or none (QueueFull)."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(items) > self._queue.maxsize:
            raise LargerThanQueue(f"{len(items)} requests in one call, but the queue holds {self._queue.maxsize}")
        if self._queue.maxsize - self._queue.qsize() < len(items):
            raise QueueFull(f"generate queue is full ({self._queue.qsize()}/{self._queue.maxsize} waiting)")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Out]] = []
        for item in items:
            fut: asyncio.Future[Out] = loop.create_future()
            self._queue.put_nowait((item, fut))  # cannot fail: room was checked and nothing awaited since
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _gather_batch(self) -> list[tuple[In, asyncio.Future[Out]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():  # already waiting: take it without waiting for the clock
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather_batch()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # drop requests whose client left
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            items = [item for item, _ in live]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_isolated, items)
            except Exception as e:  # noqa: BLE001  (a worker that dies would hang every later request)
                log.exception("batch of %d failed", len(items))
                results = [e] * len(items)
            if self.on_batch_done is not None:
                self.on_batch_done(len(items), time.perf_counter() - started)
            for (_, fut), result in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def _run_isolated(self, items: list[In]) -> list[Out | Exception]:
        """The batch in one call; if it fails, each item alone, so one bad request fails only itself."""
        try:
            return list(self.run_batch(items))
        except Exception as e:
            if len(items) == 1:
                return [e]
            log.warning("batch of %d failed (%s); retrying its requests one by one", len(items), e)
        out: list[Out | Exception] = []
        for item in items:
            try:
                out.extend(self.run_batch([item]))
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out
