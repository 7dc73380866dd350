"""The HTTP API of `tapper serve`: one engine, one store, many tenants and users.

Routes are thin: validation lives in schemas.py (and json_body.py for the JSON itself), state in the store,
batching in batcher.py, refits in jobs.py. Every route except /healthz, /metrics and the OpenAPI pages needs
an API key; a tenant only ever sees its own users (another tenant's user id is simply not found).

Every response carries an `X-Request-ID`. An unexpected failure is answered 500 `{"detail": "internal
error", "request_id": ...}` and only the log holds what went wrong, under that id. The access log
(logger `tapper.access`) names routes by their template, never by the user id in the path.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Discriminator, Field, Tag
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tapper.data.lamp_io import parse_date, task_field_problem
from tapper.data.tasks import Task
from tapper.engine import GenerationRequest, GenerationResult, TapperEngine
from tapper.serve.auth import presented_key, require_tenant
from tapper.serve.batcher import LargerThanQueue, MicroBatcher, QueueFull
from tapper.serve.body_limit import BodyLimit
from tapper.serve.config import ServeConfig
from tapper.serve.jobs import NothingToFit, RefreshJobs, TooManyJobs
from tapper.serve.json_body import StrictJSONRoute
from tapper.serve.metrics import ServeMetrics
from tapper.serve.records import to_new_record
from tapper.serve.schemas import (
    GENERATE_EXAMPLES,
    ID_PATTERN,
    MAX_GENERATE_ITEMS,
    RECORDS_EXAMPLES,
    AppendIn,
    AppendOut,
    GenerateIn,
    GenerateOut,
    HealthOut,
    JobOut,
    RecordIn,
    UserOut,
)
from tapper.store import Job, RecordConflict, UserStateCache, UserStore

log = logging.getLogger(__name__)
access_log = logging.getLogger("tapper.access")
REQUEST_ID_HEADER = "X-Request-ID"

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
    # Figures about users across all tenants are shown only to a scraper that presents the metrics key.
    metrics.add_gauge("tapper_users", "users in the store (all tenants)", store.count_users, private=True)
    metrics.add_gauge("tapper_cached_users", "users held in the in-memory cache (all tenants)", lambda: len(cache),
                      private=True)
    metrics.add_gauge("tapper_queue_depth", "generate requests waiting for a batch", lambda: batcher.depth)
    metrics.add_gauge("tapper_jobs_pending", "refresh jobs queued or running here", lambda: jobs.pending)

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
        description=(
            "Personalized generation with TAP-PER prefixes, for many users from one process.\n\n"
            "Every /v1 route needs an API key (`tapper serve add-key`): press **Authorize** and paste it, or send "
            "`Authorization: Bearer <key>` (or `X-API-Key: <key>`). Bodies are JSON: send "
            "`Content-Type: application/json`."
        ),
        version="1",
        lifespan=lifespan,
        strict_content_type=False,  # a body without any Content-Type is read as JSON (json_body.py)
    )
    app.router.route_class = StrictJSONRoute  # every route below parses its body strictly
    app.state.store = store
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(_Edge, metrics=metrics)  # added last = outermost: it sees the 413s and every failure
    _add_error_handlers(app)

    def unavailable(message: str) -> HTTPException:
        return HTTPException(503, detail=message, headers={"Retry-After": str(config.retry_after_s)})

    @app.get("/healthz", response_model=HealthOut, tags=["ops"])
    def healthz() -> HealthOut:
        return HealthOut(status="ok", task=task.name, row_size=engine.row_size, store=store.backend,
                         queue=batcher.depth)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    def prometheus(request: Request) -> PlainTextResponse:
        """Prometheus text. Without a key: traffic, latency, batching and queue figures. With the metrics key
        (`Authorization: Bearer <TAPPER_METRICS_KEY>`): also the user counts, which span all tenants."""
        key = presented_key(request)
        if key is not None and not (config.metrics_key and hmac.compare_digest(key, config.metrics_key)):
            raise HTTPException(401, detail="invalid metrics key (send none for the public figures)",
                                headers={"WWW-Authenticate": "Bearer"})
        text = metrics.render(include_private=key is not None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/users/{user_id}/records", response_model=AppendOut, tags=["users"])
    def append_records(
        user_id: UserIdPath, body: Annotated[AppendIn, Body(openapi_examples=RECORDS_EXAMPLES)], tenant: Tenant
    ) -> AppendOut:
        """Append history records; a record id already stored with the same content is skipped."""
        _check_task_rules(body.records, task)  # before anything is stored: a refused request stores nothing
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
        body: Annotated[GenerateBody, Body(openapi_examples=GENERATE_EXAMPLES)], tenant: Tenant
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


def _check_task_rules(records: list[RecordIn], task: Task) -> None:
    """The run's task's value rules (a LaMP-3 score is a rating 1-5): a 422 naming every offending field."""
    errors = []
    for index, record in enumerate(records):
        for name, value in record.model_dump(exclude={"id"}).items():
            problem = task_field_problem(task.name, name, value)
            if problem is not None:
                errors.append({"type": "value_error", "loc": ("body", "records", index, name),
                               "msg": f"{problem} ({task.name})"})
    if errors:
        raise RequestValidationError(errors)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Inputs are not echoed back: they can be megabytes, and they are the client's own data anyway.
        errors = [
            {"loc": [_utf8_safe(part) for part in e.get("loc", ())], "msg": _utf8_safe(e.get("msg", "")),
             "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})


def _utf8_safe(part: object) -> object:
    """A key or message that came from the body can hold a lone surrogate, which no UTF-8 response can carry:
    it is written as its escape (\\udfff) instead."""
    return part.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(part, str) else part


class _Edge:
    """ASGI middleware around everything: a request id on every response, metrics by route template, one
    access-log line per request (route template, never the path with its user id), and the last word on
    failures: an unexpected exception is logged with the request id and answered 500 "internal error"
    (its type and message stay in the log), instead of reaching the server, which would log it again."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        status = 500
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            route = _route_of(scope)
            log.exception("request %s (%s %s) failed", request_id, scope.get("method", ""), route)
            status = 500
            if not started:
                body = json.dumps({"detail": "internal error", "request_id": request_id}).encode()
                await send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            route = _route_of(scope)
            elapsed = time.perf_counter() - start
            self.metrics.requests.inc(route, str(status))
            self.metrics.latency.observe(elapsed, route)
            access_log.info("%s %s %s %d %.1fms", request_id, scope.get("method", ""), route, status,
                            elapsed * 1000.0)


def _route_of(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", "unmatched")
