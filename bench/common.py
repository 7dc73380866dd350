"""Shared result writing for the benchmarks: JSON + Markdown table + PNG plot, each stamped with the exact
command line, the commit, the hash of the tapper source, the machine and the wall time, written atomically
into results/."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapper.compare import report
from tapper.compare.report import Table  # noqa: F401  (the benches import it from here)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
# The benches build their Result once the work is done, so the wall time a result reports counts from when the
# script imported this module (its start), not from the Result's construction.
SCRIPT_STARTED = time.time()


def command_line() -> str:
    """The command that produced this result, as one would type it from the project root."""
    exe = Path(sys.executable)
    try:
        exe_text = os.path.relpath(exe, Path.cwd()) if exe.is_relative_to(Path.cwd()) else str(exe)
    except ValueError:
        exe_text = str(exe)
    script = Path(sys.argv[0])
    try:
        script_text = str(script.resolve().relative_to(ROOT))
    except ValueError:
        script_text = sys.argv[0]
    return shlex.join([exe_text, script_text, *sys.argv[1:]])


def git_commit() -> str | None:
    return report.git_commit(ROOT)


@dataclass
class Result(report.Report):
    """One benchmark's output: tapper.compare's Report, stamped with the command as typed from the project
    root and this checkout's commit, written to results/ by default. Its wall time is the script's."""

    started: float = field(default_factory=lambda: SCRIPT_STARTED)

    def write_and_print(self, out_dir: Path = RESULTS, plot: Callable[[Any], None] | None = None) -> None:
        """Write the result files, then show on the console what they hold."""
        for path in self.write(out_dir, plot):
            print(f"wrote {path}")
        print(self.text())

    def write(self, out_dir: Path = RESULTS, plot: Callable[[Any], None] | None = None) -> list[Path]:
        if plot is not None:
            self.plot = plot
        return report.Report.write(self, out_dir, command=command_line(), commit=git_commit())


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def fmt_seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
