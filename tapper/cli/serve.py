"""`tapper serve`: run the HTTP service; `tapper serve add-key | list-keys | revoke-key`: manage the tenants' API
keys (in the store the server uses: RUN/serve.db by default, as for `tapper serve`); `tapper quantize`: write a
run's user table as int8 rows.

Shutdown: SIGTERM or SIGINT stops accepting requests, lets uvicorn finish the ones in flight, then closes the
store (on SQLite: the write-ahead log is checkpointed and removed) before the process ends with that signal.
uvicorn alone would re-raise the signal right after its own shutdown, so a `finally:` around it never ran.
"""

from __future__ import annotations

import copy
import os
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_DB_NAME = "serve.db"
METRICS_KEY_ENV = "TAPPER_METRICS_KEY"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RowFormat(StrEnum):
    float32 = "float32"  # exact
    int8 = "int8"  # int8 numbers + one float32 scale per row: a quarter of the bytes


class AccessLog(StrEnum):
    on = "on"  # one line per request: request id, method, route template, status, time (no user ids)
    off = "off"


def _default_db(run: Path) -> str:
    # Rows only make sense for the run that fitted them, so the embedded store lives beside the run.
    return f"sqlite:///{(run / DEFAULT_DB_NAME).resolve()}"


def _run_task(engine: object, run: Path):
    from tapper.data.tasks import Task, get_task

    declared = getattr(engine, "task", None)
    if isinstance(declared, Task):
        return declared
    if declared is None:
        from tapper.prefix.config import TapperConfig
        from tapper.prefix.model import CONFIG_NAME

        declared = TapperConfig.load(run / CONFIG_NAME).task
    return get_task(str(declared))


def serve(
    ctx: typer.Context,
    run: Annotated[Path | None, typer.Option("--run", help="a trained run directory (tapper train / init_run)")]
    = None,
    db: Annotated[str | None, typer.Option(help="sqlite:///path.db or postgresql://...; default: RUN/serve.db")]
    = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    max_batch: Annotated[int, typer.Option(help="requests per forward pass (1 = no micro-batching)")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="longest wait for a batch to fill")] = 10.0,
    queue_size: Annotated[int, typer.Option(help="waiting generate requests before answering 503")] = 256,
    cache_users: Annotated[int, typer.Option(help="users whose history and row stay in memory")] = 10_000,
    device: Annotated[str, typer.Option(help="torch device for the engine")] = "cpu",
    model: Annotated[str | None, typer.Option(help="the backbone the run was trained on, from where it is now "
                                              "(default: the one the run records; its weights are checked)")] = None,
    allow_other_model: Annotated[bool, typer.Option(help="use --model even if its weights differ (same shape)")]
    = False,
    torch_threads: Annotated[int | None, typer.Option(
        "--threads", "--torch-threads",
        help="torch CPU threads; 0 = auto: torch's default (one per core), 1 for a model under 10M parameters; "
             "1 avoids thread thrash on a busy CPU")] = 0,
    dtype: Annotated[str, typer.Option(
        help="auto | fp32 | bf16 for the engine: bf16 holds the backbone in bf16 (auto: on a CPU with "
             "AVX512-BF16/AMX or CUDA, for models of 10M+ parameters)")] = "auto",
    access_log: Annotated[AccessLog, typer.Option(
        help="on: one line per request with the route template (never a user id); off: none")] = AccessLog.on,
    row_format: Annotated[RowFormat, typer.Option(
        help="how the store writes refitted P_u rows: float32 (exact) or int8 (per-row scale, a quarter of the "
             "bytes); rows of either format are read")] = RowFormat.float32,
) -> None:
    """Serve personalized generation over HTTP (OpenAPI docs at /docs)."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        raise typer.BadParameter("--run is required to serve", param_hint="--run")
    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory", param_hint="--run")
    from tapper.engine import TapperEngine
    from tapper.precision import resolve_dtype, set_threads
    from tapper.serve import ServeConfig, create_app
    from tapper.store import UserStore

    try:
        resolve_dtype(dtype)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--dtype") from None
    try:
        config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                             cache_users=cache_users, metrics_key=os.environ.get(METRICS_KEY_ENV) or None)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    engine = TapperEngine.from_pretrained(run, device=device, backbone=model, allow_other_backbone=allow_other_model,
                                          dtype=dtype)
    set_threads(torch_threads or 0, engine.model.hf_model)
    store = UserStore(db or _default_db(run), row_format=RowFormat(row_format).value)
    try:
        app = create_app(engine, store, _run_task(engine, run), config)
    except BaseException:
        store.close()
        raise
    typer.echo(f"tapper serve: {run} ({store.backend} store) on http://{host}:{port}  (docs: /docs)", err=True)
    serve_app(app, store, host=host, port=port, access=AccessLog(access_log))


def serve_app(app: Any, store: Any, *, host: str, port: int, access: AccessLog = AccessLog.on) -> None:
    """Serve `app` until SIGTERM/SIGINT, close `store` whatever happens, then end as the signal would."""
    import uvicorn

    try:
        received = run_until_stopped(uvicorn.Config(app, host=host, port=port, access_log=False,
                                                    log_config=log_config(access)))
    finally:
        store.close()
    end_like(received)


def log_config(access: AccessLog) -> dict[str, Any]:
    """uvicorn's logging setup, plus tapper's loggers on stderr. uvicorn's own access log (which prints each
    path, user ids included) stays off; `tapper.access` prints route templates instead."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["tapper"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["tapper"] = {"class": "logging.StreamHandler", "formatter": "tapper",
                                    "stream": "ext://sys.stderr"}
    config["loggers"]["tapper"] = {"handlers": ["tapper"], "level": "INFO", "propagate": False}
    config["loggers"]["tapper.access"] = {"level": "INFO" if access is AccessLog.on else "WARNING"}
    return config


def run_until_stopped(config: Any) -> list[int]:
    """Run a uvicorn server until SIGTERM or SIGINT and return the signals received (empty when it stopped on
    its own). The signals reach uvicorn's graceful shutdown as usual, but are not re-raised afterwards, so the
    caller's cleanup (closing the store) runs; `end_like` then ends the process as the signal would have."""
    import uvicorn

    server = uvicorn.Server(config)
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if signum not in received:
            received.append(signum)
        server.handle_exit(signum, frame)

    # uvicorn installs its own handlers while it serves and puts these back afterwards, then re-raises what it
    # caught: that lands here (noted again, harmlessly) instead of killing the process before the cleanup.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received


def end_like(received: list[int]) -> None:
    """After a clean shutdown caused by a signal, end the process by that signal (its default action), so a
    supervisor sees the usual exit status."""
    if received:
        signal.signal(received[0], signal.SIG_DFL)
        signal.raise_signal(received[0])


RunOption = Annotated[Path | None, typer.Option("--run", help="the served run: its store RUN/serve.db is used "
                                                              "(as `tapper serve --run RUN` does)")]
DbOption = Annotated[str | None, typer.Option(help="the store the server uses (sqlite:///... or postgresql://...); "
                                                   "default: RUN/serve.db")]


def _store_url(run: Path | None, db: str | None) -> str:
    """--db, or the store `tapper serve --run RUN` uses by default."""
    if db:
        return db
    if run is None:
        raise typer.BadParameter("give --run RUN (its store RUN/serve.db, as `tapper serve` uses) or --db URL",
                                 param_hint="--run / --db")
    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory", param_hint="--run")
    return _default_db(run)


def add_key(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    run: RunOption = None,
    db: DbOption = None,
) -> None:
    """Create an API key for a tenant and print it once (only its hash is stored)."""
    from tapper.serve import create_api_key
    from tapper.store import UserStore

    store = UserStore(_store_url(run, db))
    try:
        key = create_api_key(store, tenant)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--tenant") from None
    finally:
        store.close()
    typer.echo(key)


def list_keys(
    run: RunOption = None,
    db: DbOption = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
) -> None:
    """List the API keys: id (the start of the key's hash; the key itself is never stored), tenant, created."""
    from datetime import UTC, datetime

    from tapper.store import UserStore

    store = UserStore(_store_url(run, db))
    try:
        keys = store.list_api_keys(tenant)
    finally:
        store.close()
    if not keys:
        typer.echo("no API keys" + (f" for tenant {tenant!r}" if tenant else ""), err=True)
        return
    typer.echo("key id\ttenant\tcreated (UTC)")
    for k in keys:
        created = datetime.fromtimestamp(k.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{k.key_id}\t{k.tenant}\t{created}")


def revoke_key(
    key_id: Annotated[str | None, typer.Option("--id", help="a key id as `list-keys` shows it")] = None,
    key: Annotated[str | None, typer.Option(help="the key itself")] = None,
    tenant: Annotated[str | None, typer.Option(help="revoke every key of this tenant")] = None,
    run: RunOption = None,
    db: DbOption = None,
) -> None:
    """Revoke API keys (one by id or by the key, or all of a tenant's); a revoked key is refused at once by every
    server on the store (keys are looked up on each request)."""
    from tapper.serve import hash_api_key
    from tapper.store import UserStore

    if sum(x is not None for x in (key_id, key, tenant)) != 1:
        raise typer.BadParameter("give exactly one of --id, --key, --tenant", param_hint="--id / --key / --tenant")
    store = UserStore(_store_url(run, db))
    try:
        revoked = store.revoke_api_keys(key_hash=hash_api_key(key) if key is not None else None, key_id=key_id,
                                        tenant=tenant)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--id") from None
    finally:
        store.close()
    if not revoked:
        typer.echo("error: no such key" if tenant is None else f"error: tenant {tenant!r} has no keys", err=True)
        raise typer.Exit(1)
    for k in revoked:
        typer.echo(f"revoked {k.key_id} ({k.tenant})")


def quantize(
    run: Annotated[Path, typer.Option("--run", help="a trained run directory; its user table is rewritten")],
) -> None:
    """Rewrite a run's user table (RUN/user_state) as int8 rows with a per-row scale: a quarter of the bytes,
    read back dequantized by every loader. (`tapper onboard` saves the table as float32 again.)"""
    from tapper.io_utils import atomic_replace_dir
    from tapper.prefix.model import USER_STATE_DIR
    from tapper.prefix.user_state import USERS_NAME, WEIGHTS_NAME, UserStateTable

    folder = run / USER_STATE_DIR
    if not (folder / USERS_NAME).is_file():
        raise typer.BadParameter(f"{folder} holds no user table ({USERS_NAME})", param_hint="--run")
    before = (folder / WEIGHTS_NAME).stat().st_size
    table = UserStateTable.from_pretrained(folder)
    original = table.weight.detach().clone()
    atomic_replace_dir(folder, lambda where: table.save_pretrained(where, int8=True))  # built aside, swapped in
    reread = UserStateTable.from_pretrained(folder).weight.detach()
    error = float((reread - original).abs().max()) if len(original) else 0.0
    after = (folder / WEIGHTS_NAME).stat().st_size
    typer.echo(f"{folder}: {len(original)} rows of {table.row_size} as int8, {before:,} -> {after:,} bytes; "
               f"largest change {error:.3g}")


def register(app: typer.Typer) -> None:
    serve_app = typer.Typer(help="Serve personalized generation over HTTP.", add_completion=False)
    serve_app.callback(invoke_without_command=True)(serve)
    serve_app.command("add-key")(add_key)
    serve_app.command("list-keys")(list_keys)
    serve_app.command("revoke-key")(revoke_key)
    app.command("quantize")(quantize)
    app.add_typer(serve_app, name="serve")
