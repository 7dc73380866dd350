"""tapper's own log lines on stderr: stage summaries, "reusing stage 1", and the plain progress lines that long
steps write when no terminal shows a live bar (a background run's log file would otherwise say nothing for
most of an hour). The `tapper` command shows them for every command; the benchmark scripts call
`show_tapper_log` once."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def live_progress() -> bool:
    """Whether a redrawn progress bar can be seen: a terminal or a notebook. Without one (a log file, CI),
    tqdm's carriage returns would pile up in the log, so long steps log plain lines instead."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def log_written(logger: logging.Logger, what: str, done: int, total: int, began: float) -> None:
    """A long generation step's progress line ("PAG summaries: 64 of 992 written, 101 s"), when no live bar
    shows it; `began` is the step's time.perf_counter() at its start."""
    if not live_progress():
        logger.info("%s: %d of %d written, %.0f s", what, done, total, time.perf_counter() - began)


class StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class LineFormat(logging.Formatter):
    """An info line as it is; a warning or worse prefixed by its level ("warning: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def _attach() -> logging.Handler:
    logger = logging.getLogger("tapper")
    handler = StderrHandler()
    handler.setFormatter(LineFormat())
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def show_tapper_log() -> None:
    """For a script: tapper's INFO lines (and worse) on stderr from here to the end of the process, each once
    (not again through a root handler that some library may configure on the way)."""
    _attach()
    logging.getLogger("tapper").propagate = False


@contextmanager
def tapper_log_shown() -> Iterator[None]:
    """tapper's INFO lines (and worse) on stderr while the block runs; the logger is left as it was."""
    logger = logging.getLogger("tapper")
    level = logger.level
    handler = _attach()
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
