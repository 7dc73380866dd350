"""Shared result writing for the benchmarks: JSON + Markdown table + PNG plot, each stamped with the exact
command line, the commit, the hash of the tapper source, the machine and the wall time, written atomically
into results/."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


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
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def tapper_source() -> str:
    """The hash of the tapper package's .py and .json files that ran (tapper.settings.source_hash): unlike the
    commit, it also tells apart runs of uncommitted code; bench/quality's kept-result tags include it."""
    from tapper.settings import source_hash

    return source_hash()


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            # other work on the machine slows every timing: the 1/5/15-minute load averages at the end
            "load_average": [round(x, 2) for x in os.getloadavg()]}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    align_left: int = 1  # how many leading columns are text (left-aligned)

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        rule = "| " + " | ".join("---" if i < self.align_left else "---:" for i in range(len(self.columns))) + " |"
        body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join([f"### {self.title}", "", head, rule, *body])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Result:
    """One benchmark's output; `write` stamps it and puts {name}.json/.md(/.png) into results/."""

    name: str
    title: str
    data: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def write_and_print(self, out_dir: Path = RESULTS, plot: Callable[[Any], None] | None = None) -> None:
        """Write the result files, then show on the console what they hold."""
        for path in self.write(out_dir, plot):
            print(f"wrote {path}")
        for table in self.tables:
            print(table.markdown() + "\n")
        for note in self.notes:
            print(f"- {note}")

    def write(self, out_dir: Path = RESULTS, plot: Callable[[Any], None] | None = None) -> list[Path]:
        from tapper.io_utils import atomic_write_text

        out_dir.mkdir(parents=True, exist_ok=True)
        wall = time.time() - self.started
        stamp = {
            "command": command_line(), "commit": git_commit(), "tapper_source": tapper_source(), "machine": machine(),
            "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": round(wall, 1),
        }
        payload = {"benchmark": self.name, "title": self.title, **stamp, **self.data}
        written = [out_dir / f"{self.name}.json", out_dir / f"{self.name}.md"]
        atomic_write_text(written[0], json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
        lines = [f"# {self.title}", "", f"Command: `{stamp['command']}`  ",
                 f"Commit {stamp['commit']}, {stamp['finished_utc']} UTC, wall time {wall:.0f} s, "
                 f"{stamp['machine']['cpus']} CPUs (torch threads {stamp['machine']['torch_threads']}), load average "
                 f"{stamp['machine']['load_average'][0]:.1f} at the end.", ""]
        for table in self.tables:
            lines += [table.markdown(), ""]
        if self.notes:
            lines += ["Notes:", "", *[f"- {n}" for n in self.notes], ""]
        if plot is not None:
            png = out_dir / f"{self.name}.png"
            save_plot(png, plot)
            written.append(png)
            lines += [f"![{self.title}]({png.name})", ""]
        atomic_write_text(written[1], "\n".join(lines))
        return written


def save_plot(path: Path, draw: Callable[[Any], None]) -> None:
    """Draw into a fresh matplotlib figure (headless) and save it atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tapper.io_utils import atomic_write_with

    fig = plt.figure(figsize=(9, 4.5))
    try:
        draw(fig)
        fig.tight_layout()
        atomic_write_with(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    finally:
        plt.close(fig)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def fmt_seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
