"""`tapper onboard --db URL --tenant T [--shard i/N]`: rows into a service store (tapper.onboard_shard)."""

from __future__ import annotations

import logging

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def onboard_to_store(model, cfg, questions: list, db: str | None, tenant: str | None, shard: str | None,
                     steps: int | None) -> None:
    from tapper.distributed import parse_shard
    from tapper.engine import TapperEngine
    from tapper.onboard_shard import histories_by_user, onboard_shard
    from tapper.store import StoreError, UserStore

    if db is None or tenant is None:
        _fail("--shard and --tenant go with --db (several processes cannot share one run's table file; each "
              "writes its users' rows to the store)")
    try:
        index, count = parse_shard(shard or "0/1")
    except ValueError as e:
        _fail(f"--shard: {e}")
    engine = TapperEngine(model, cfg)
    say = logging.getLogger("tapper.onboard")

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            say.info("onboard shard %d/%d: %d/%d users", index, count, done, total)

    try:
        store = UserStore(db)
    except StoreError as e:
        _fail(str(e))
    try:
        report = onboard_shard(engine, store, tenant, histories_by_user(questions), (index, count), steps,
                               on_user=progress)
    except StoreError as e:
        _fail(str(e))
    finally:
        store.close()
    for user_id, why in sorted(report.failed.items()):
        typer.echo(f"warning: {user_id}: {why}", err=True)
    typer.echo(f"shard {index}/{count}: {report.users} user(s); fitted {len(report.fitted)}, already fitted "
               f"{len(report.kept)}, busy elsewhere {len(report.busy)}, failed {len(report.failed)} in "
               f"{report.seconds:.1f} s ({report.users_per_second:.2f} users/s); {report.records_added} records added")
    if report.failed:
        raise typer.Exit(1)
