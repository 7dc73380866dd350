"""`tapper serve`: run the HTTP service; `tapper serve add-key`: hand a tenant a new API key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DB_NAME = "serve.db"


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
    torch_threads: Annotated[int | None, typer.Option(
        help="torch intra-op threads (default: torch's choice); 1 avoids thread thrash on a busy CPU")] = None,
) -> None:
    """Serve personalized generation over HTTP (OpenAPI docs at /docs)."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        raise typer.BadParameter("--run is required to serve", param_hint="--run")
    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory", param_hint="--run")
    import uvicorn

    from tapper.engine import TapperEngine
    from tapper.serve import ServeConfig, create_app
    from tapper.store import UserStore

    if torch_threads is not None:
        import torch

        torch.set_num_threads(max(1, torch_threads))
    config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                         cache_users=cache_users)
    engine = TapperEngine.from_pretrained(run, device=device)
    store = UserStore(db or _default_db(run))
    try:
        app = create_app(engine, store, _run_task(engine, run), config)
        typer.echo(f"tapper serve: {run} ({store.backend} store) on http://{host}:{port}  (docs: /docs)",
                   err=True)
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        store.close()


def add_key(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    db: Annotated[str, typer.Option(help="the store the server uses (sqlite:///... or postgresql://...)")],
) -> None:
    """Create an API key for a tenant and print it once (only its hash is stored)."""
    from tapper.serve import create_api_key
    from tapper.store import UserStore

    store = UserStore(db)
    try:
        key = create_api_key(store, tenant)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--tenant") from None
    finally:
        store.close()
    typer.echo(key)


def register(app: typer.Typer) -> None:
    serve_app = typer.Typer(help="Serve personalized generation over HTTP.", add_completion=False)
    serve_app.callback(invoke_without_command=True)(serve)
    serve_app.command("add-key")(add_key)
    app.add_typer(serve_app, name="serve")
