"""The HTTP API of `tapper serve`: one engine, one store, many tenants and users.

Routes are thin: validation lives in schemas.py, state in the store, batching in batcher.py, refits in
jobs.py. Every route except /healthz, /metrics and the OpenAPI pages needs an API key; a tenant only ever
sees its own users (another tenant's user id is simply not found).
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Discriminator, Field, Tag
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tapper.data.lamp_io import parse_date
from tapper.data.tasks import Task
from tapper.engine import GenerationRequest, GenerationResult, TapperEngine
from tapper.serve.auth import require_tenant
from tapper.serve.batcher import LargerThanQueue, MicroBatcher, QueueFull
from tapper.serve.body_limit import BodyLimit
from tapper.serve.config import ServeConfig
from tapper.serve.jobs import NothingToFit, RefreshJobs, TooManyJobs
from tapper.serve.metrics import ServeMetrics
from tapper.serve.records import to_new_record
from tapper.serve.schemas import (
    ID_PATTERN,
    MAX_GENERATE_ITEMS,
    AppendIn,
    AppendOut,
    GenerateIn,
    GenerateOut,
    HealthOut,
    JobOut,
    UserOut,
)
from tapper.store import Job, RecordConflict, StoreError, UserStateCache, UserStore

log = logging.getLogger(__name__)

UserIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
JobIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]
Tenant = Annotated[str, Depends(require_tenant)]
GenerateBody = Annotated[
    Annotated[GenerateIn, Tag("request")]
    | Annotated[list[GenerateIn], Field(min_length=1, max_length=MAX_GENERATE_ITEMS), Tag("requests")],
    Discriminator(lambda v: "requests" if isinstance(v, list) else "request"),
]


def create_app(engine: TapperEngine, store: UserStore, task: Task, config: ServeConfig | None = None) -> FastAPI:
    """A ready app; the caller owns (and closes) the store. The engine must serve `task`."""
    config = config or ServeConfig()
    store.bind_row_size(engine.row_size)
    # An embedded store has exactly one server, so anything unfinished now was cut off by its last crash.
    stale = store.fail_stale_jobs(0.0 if store.backend == "sqlite" else config.stale_job_s)
    if stale:
        log.warning("marked %d unfinished refresh job(s) of a previous server as failed", stale)
    metrics = ServeMetrics(config.max_batch)
    cache = UserStateCache(store, config.cache_users, engine.row_size)
    batcher: MicroBatcher[GenerationRequest, GenerationResult] = MicroBatcher(
        engine.generate, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
        queue_size=config.queue_size, on_batch=metrics.batch_size.observe,
        on_batch_done=lambda size, seconds: metrics.engine_seconds.observe(seconds),
    )
    jobs = RefreshJobs(engine, store, cache, metrics, config.max_pending_jobs, config.stale_job_s)
    metrics.add_gauge("tapper_users", "users in the store (all tenants)", store.count_users)
    metrics.add_gauge("tapper_queue_depth", "generate requests waiting for a batch", lambda: batcher.depth)
    metrics.add_gauge("tapper_jobs_pending", "refresh jobs queued or running here", lambda: jobs.pending)
    metrics.add_gauge("tapper_cached_users", "users held in the in-memory cache", lambda: len(cache))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            jobs.shutdown()

    app = FastAPI(
        title="tapper serve",
        description="Personalized generation with TAP-PER prefixes, for many users from one process.",
        version="1",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(_RequestMetrics, metrics=metrics)  # added last = outermost: it sees the 413s too
    _add_error_handlers(app)

    def unavailable(message: str) -> HTTPException:
        return HTTPException(503, detail=message, headers={"Retry-After": str(config.retry_after_s)})

    @app.get("/healthz", response_model=HealthOut, tags=["ops"])
    def healthz() -> HealthOut:
        return HealthOut(status="ok", task=task.name, row_size=engine.row_size, store=store.backend,
                         queue=batcher.depth)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/users/{user_id}/records", response_model=AppendOut, tags=["users"])
    def append_records(user_id: UserIdPath, body: AppendIn, tenant: Tenant) -> AppendOut:
        """Append history records; a record id already stored with the same content is skipped."""
        records = [to_new_record(r, task) for r in body.records]
        try:
            result = store.append_records(tenant, user_id, records)
        except RecordConflict as e:
            raise HTTPException(409, detail=str(e)) from None
        cache.evict(tenant, user_id)
        return AppendOut(user_id=user_id, added=result.added, duplicates=result.duplicates, total=result.total)

    @app.get("/v1/users/{user_id}", response_model=UserOut, tags=["users"])
    def get_user(user_id: UserIdPath, tenant: Tenant) -> UserOut:
        head = store.user_head(tenant, user_id)
        if head is None:
            raise HTTPException(404, detail=f"no user {user_id!r}")
        return UserOut(user_id=user_id, records=head.record_count, history_version=head.history_version,
                       row_version=head.row_version, row_fitted_on_history_version=head.row_history_version)

    @app.delete("/v1/users/{user_id}", status_code=204, tags=["users"])
    def delete_user(user_id: UserIdPath, tenant: Tenant) -> Response:
        """Forget the user: history, P_u row, jobs and cached copies. Later requests take the cold-start path."""
        found = store.delete_user(tenant, user_id)
        cache.evict(tenant, user_id)
        if not found:
            raise HTTPException(404, detail=f"no user {user_id!r}")
        return Response(status_code=204)

    @app.post("/v1/users/{user_id}/refresh", response_model=JobOut, status_code=202, tags=["users"])
    def refresh_user(user_id: UserIdPath, tenant: Tenant) -> JobOut:
        """Re-fit the user's P_u row from its stored history in the background; poll GET /v1/jobs/{id}."""
        try:
            job = jobs.submit(tenant, user_id)
        except NothingToFit as e:
            raise HTTPException(409, detail=str(e)) from None
        except TooManyJobs as e:
            metrics.rejected.inc("jobs")
            raise unavailable(str(e)) from None
        if job is None:
            raise HTTPException(404, detail=f"no user {user_id!r}")
        return _job_out(job)

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["users"])
    def get_job(job_id: JobIdPath, tenant: Tenant) -> JobOut:
        job = store.get_job(tenant, job_id)
        if job is None:
            raise HTTPException(404, detail=f"no job {job_id!r}")
        return _job_out(job)

    def prepare(tenant: str, item: GenerateIn) -> GenerationRequest:
        state = cache.get(tenant, item.user_id)
        return GenerationRequest(
            user_id=f"{tenant}/{item.user_id}",
            input=item.input,
            history=[] if state is None else state.history,
            user_row=None if state is None else state.row,
            query_day=parse_date(item.date),
        )

    @app.post("/v1/generate", tags=["generate"], response_model=GenerateOut | list[GenerateOut])
    async def generate(
        body: Annotated[GenerateBody, Body()], tenant: Tenant
    ) -> GenerateOut | list[GenerateOut]:
        """One request object, or a list of them; concurrent requests share batched forward passes."""
        items = body if isinstance(body, list) else [body]
        for i, item in enumerate(items):
            if item.task != task.name:
                where = "" if len(items) == 1 else f"request {i}: "
                raise HTTPException(
                    400, detail=f"{where}this server's run serves {task.name}, not {item.task}"
                )
        requests = await run_in_threadpool(lambda: [prepare(tenant, item) for item in items])
        try:
            results = await batcher.submit(requests)
        except QueueFull as e:
            metrics.rejected.inc("generate")
            raise unavailable(str(e)) from None
        except LargerThanQueue as e:
            raise HTTPException(422, detail=f"{e}; send fewer per call") from None
        out = [
            GenerateOut(user_id=item.user_id, task=task.name, output=r.output, raw=r.raw,
                        record_ids=list(r.record_ids), path=r.path)
            for item, r in zip(items, results, strict=True)
        ]
        return out if isinstance(body, list) else out[0]

    return app


def _job_out(job: Job) -> JobOut:
    return JobOut(id=job.id, user_id=job.user_id, status=job.status, step=job.step, total=job.total,
                  loss=job.loss, error=job.error, created=job.created, updated=job.updated)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Inputs are not echoed back: they can be megabytes, and they are the client's own data anyway.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store error: %s", exc)
        return JSONResponse(status_code=500, content={"detail": f"store error: {exc}"})

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"})


class _RequestMetrics:
    """ASGI middleware: count and time every request by its route template (never by user id)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.inc(route, str(status))
            self.metrics.latency.observe(time.perf_counter() - start, route)
