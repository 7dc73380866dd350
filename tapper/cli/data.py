"""`tapper data ...`: build LaMP tasks from raw dumps, and show a split's numbers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(no_args_is_help=True, help="LaMP data: build tasks from raw dumps, show stats.")


class Source(StrEnum):
    amazon_lamp3 = "amazon-lamp3"
    huffpost_lamp4 = "huffpost-lamp4"
    huffpost_lamp2n = "huffpost-lamp2n"
    movielens_lamp2 = "movielens-lamp2"
    reddit_lamp5r = "reddit-lamp5r"


class SplitKind(StrEnum):
    time = "time"
    user = "user"


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr (file, record, field) and exit code 2."""
    try:
        yield
    except (ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


@data_app.command("build")
def build(
    source: Annotated[Source, typer.Argument(help="which raw dump -> which LaMP task")],
    input_path: Annotated[Path, typer.Option(
        "--input", help="the raw JSON-lines dump; for movielens-lamp2 the folder of HetRec, links and TMDB files")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="folder for the six LaMP files")],
    split: Annotated[SplitKind, typer.Option(help="time: all users in each split; user: disjoint")] = "time",
    seed: Annotated[int, typer.Option(help="shuffles users (user split, --max-users)")] = 0,
    min_profile: Annotated[int, typer.Option(help="earlier records every question needs")] = 5,
    max_users: Annotated[int | None, typer.Option(help="keep at most this many users")] = None,
) -> None:
    """Build a LaMP task from a raw dump and write it in LaMP's file layout.

    amazon-lamp3: any Amazon Reviews 2018 5-core file -> LaMP_3 (product rating).

    huffpost-lamp4, huffpost-lamp2n: HuffPost News Category -> LaMP_4 (headlines), LaMP_2N (news categories).

    movielens-lamp2: MovieLens HetRec tags + TMDB overviews -> LaMP_2 (movie tagging, 15 tags).

    reddit-lamp5r: Reddit posts -> LaMP_5R (post title generation; LaMP-5's shape, not its abstracts).
    """
    from tapper.data.builders import BUILDERS
    from tapper.data.lamp_io import write_split

    with _clean_errors():
        builder = BUILDERS[Source(source).value]
        built = builder(input_path, split=SplitKind(split).value, seed=seed, min_profile=min_profile,
                        max_users=max_users)
        for name, lamp_split in built.items():
            write_split(out_dir, name, lamp_split)
    for line in built.summary.lines_of_text():
        typer.echo(line)
    typer.echo(f"wrote {', '.join(f'{name}_{{questions,outputs}}.json' for name in built)} to {out_dir}")


@data_app.command("stats")
def stats(
    questions: Annotated[Path, typer.Argument(help="a LaMP questions file")],
    outputs: Annotated[Path | None, typer.Option(help="its outputs (golds) file")] = None,
    task: Annotated[str | None, typer.Option(help="e.g. LaMP_3 (default: the outputs file's)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the numbers here")] = None,
) -> None:
    """Show users, profile sizes, date coverage, label distributions and duplicates of a LaMP split."""
    from rich.console import Console
    from rich.table import Table

    from tapper.data.lamp_io import read_split, write_json_atomic
    from tapper.data.stats import split_stats, stats_rows

    with _clean_errors():
        numbers = split_stats(read_split(questions, outputs, task=task))
        if json_out is not None:
            write_json_atomic(json_out, numbers, indent=1)
    console = Console()
    console.print(f"[bold]{questions}[/bold]", soft_wrap=True, highlight=False)
    table = Table()
    table.add_column("stat")
    table.add_column("value", overflow="fold")
    for name, value in stats_rows(numbers):
        table.add_row(name, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
