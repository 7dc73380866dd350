"""`tapper eval`: score a LaMP predictions file against its golds with LaMP's official metrics
(tapper.metrics: ROUGE without stemming, as LaMP's evaluation; `--stemmed` adds the stemmed variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

BOOTSTRAP_SAMPLES = 1000


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    golds: Annotated[Path, typer.Option("--golds", help="LaMP outputs file with the gold answers.")],
    preds: Annotated[Path, typer.Option("--preds", help="Predictions in the same format as the golds.")],
    task: Annotated[
        str | None, typer.Option("--task", help="Task to score as (default: the golds file's task).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")] = None,
    ci: Annotated[
        bool, typer.Option("--ci", help=f"Add 95% bootstrap intervals ({BOOTSTRAP_SAMPLES} resamples).")
    ] = False,
    stemmed: Annotated[
        bool,
        typer.Option("--stemmed", help="Generation tasks: add rouge-1-stemmed / rouge-L-stemmed (not LaMP's)."),
    ] = False,
) -> None:
    """Score predictions with LaMP's metrics (accuracy/F1, MAE/RMSE or unstemmed ROUGE-1/ROUGE-L F)."""
    from tapper.data.lamp_io import LampFormatError, read_golds, write_json_atomic
    from tapper.data.tasks import get_task
    from tapper.metrics import bootstrap_ci, evaluate

    try:
        gold_task, gold_outputs = read_golds(golds)
        pred_task, pred_outputs = read_golds(preds)
        scored_task = get_task(task or gold_task)
        if task is None and _known(pred_task) != _known(gold_task):
            raise ValueError(f"{preds}: task {pred_task!r} differs from {golds}'s {gold_task!r} (pass --task)")
        scores = evaluate(scored_task, gold_outputs, pred_outputs, stemmed=stemmed)
        intervals = (
            bootstrap_ci(scored_task, gold_outputs, pred_outputs, n=BOOTSTRAP_SAMPLES, stemmed=stemmed)
            if ci
            else None
        )
    except (LampFormatError, OSError) as err:
        _fail(str(err))
    except KeyError as err:  # unknown task name
        _fail(str(err.args[0]) if err.args else str(err))
    except ValueError as err:  # ids that do not match, golds outside the task's answers
        _fail(f"{preds} vs {golds}: {err}")

    _print_table(scored_task.name, len(gold_outputs), scores, intervals)
    if json_out is not None:
        report = {
            "task": scored_task.name,
            "questions": len(gold_outputs),
            "golds": str(golds),
            "preds": str(preds),
            "metrics": scores,
        }
        if intervals is not None:
            report["ci95"] = {name: list(bounds) for name, bounds in intervals.items()}
        write_json_atomic(json_out, report, indent=2)


def _known(task_name: str) -> str:
    """The registry's spelling of a task name, or the name itself when it is not registered."""
    from tapper.data.tasks import get_task

    try:
        return get_task(task_name).name
    except KeyError:
        return task_name


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _print_table(
    task_name: str, questions: int, scores: dict[str, float], intervals: dict[str, tuple[float, float]] | None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{task_name}: {questions} questions")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if intervals is not None:
        table.add_column("95% CI", justify="right")
    for name, value in scores.items():
        row = [name, f"{value:.4f}"]
        if intervals is not None:
            low, high = intervals[name]
            row.append(f"[{low:.4f}, {high:.4f}]")
        table.add_row(*row)
    Console().print(table)
