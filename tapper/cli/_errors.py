"""How the `tapper` command reports: one `error: ...` line for a mistake the user can fix (no traceback), and
tapper's log lines on stderr (tapper.log_lines: stage summaries, "reusing stage 1", a GGUF conversion, progress
without a terminal).

TAPPER_DEBUG=1 lets the exception through with its traceback."""

from __future__ import annotations

import os

import click
import typer
from typer.core import TyperGroup

from tapper.log_lines import tapper_log_shown

DEBUG_ENV = "TAPPER_DEBUG"


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean the user asked for something that cannot work."""
    from tapper.data.lamp_io import LampFormatError
    from tapper.errors import TapperError
    from tapper.examples import PromptBudgetError
    from tapper.settings import SettingError

    return (TapperError, LampFormatError, SettingError, PromptBudgetError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError)


class TapperGroup(TyperGroup):
    """The top-level group: every command runs with tapper's log lines shown and everyday mistakes reported as
    one line with exit status 2."""

    def invoke(self, ctx: click.Context):
        with tapper_log_shown():
            try:
                return super().invoke(ctx)
            except user_errors() as e:
                if os.environ.get(DEBUG_ENV):
                    raise
                message = str(e)
                if isinstance(e, OSError) and e.filename is not None and e.strerror:
                    message = f"{e.filename}: {e.strerror}"
                typer.echo(f"error: {message}", err=True)
                raise typer.Exit(2) from None
