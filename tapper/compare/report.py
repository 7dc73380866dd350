"""The comparison's report: tables (Markdown), notes (TAP-PER against each peer with a paired bootstrap of the
difference; onboarding against OPPU), the plot, and the result files `<name>.json`, `.md` and `.png`, each
stamped with the command, the commit, the hash of the tapper source, the machine and the wall time."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapper.experiment import VariantResult, primary_metric
from tapper.metrics import bootstrap_ci, evaluate

if TYPE_CHECKING:
    import numpy as np

COLD = "TAP-PER, new user without a fit (mean row + P_q)"
ONBOARDED = "TAP-PER, onboarded"
CONTROL = "non-personalized, same budget"
# Every main row's primary metric is compared question by question with these (when they ran): the numbers
# are kept in the JSON; every answer of every method goes to answers/<name>.json beside it (Report.answers), so
# a later session can pair any two results (bench/pair_results.py) without the runs dir that made them.
PAIRED_REFERENCES = ("TAP-PER", CONTROL)
ANSWERS_DIR = "answers"


def onboarded_name(steps: int, lr: float | None = None) -> str:
    """A fit's result name: "TAP-PER, onboarded (16-step P_u fit)", or with its learning rate when a grid of
    rates is compared: "TAP-PER, onboarded (16-step P_u fit, lr 0.003)"."""
    return f"{ONBOARDED} ({steps}-step P_u fit)" if lr is None else f"{ONBOARDED} ({steps}-step P_u fit, lr {lr:g})"


def is_new_user_result(name: str) -> bool:
    """Scored on the held-out users only: reported in the onboarding table, not the main one."""
    return name == COLD or name.startswith(ONBOARDED)


# -- tables and files ---------------------------------------------------------------------------------------

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


def git_commit(where: Path | None = None) -> str | None:
    """The short commit of the checkout holding `where` (default: the tapper package), None outside git."""
    where = where or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            # other work on the machine slows every timing: the 1/5/15-minute load averages at the end
            "load_average": [round(x, 2) for x in os.getloadavg()]}


@dataclass
class Report:
    """One comparison's output. `write` stamps it and puts {name}.json/.md/.png into a folder, and with
    `answers` ({method: {question id: answer}}) also answers/{name}.json: each method's answers in LaMP's
    output format ({"task", "golds": [{"id", "output"}]}), so LaMP's own evaluator reads them."""

    name: str
    title: str
    data: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None
    answers: dict[str, dict[str, str]] = field(default_factory=dict)
    task: str | None = None  # LaMP's task name, for the answers file
    started: float = field(default_factory=time.time)

    def write(self, out_dir: Path, command: str | None = None, commit: str | None = None) -> list[Path]:
        """Write the files; `command` (default: this process's argv) and `commit` (default: the package's
        checkout) go into the stamp."""
        from tapper.io_utils import atomic_write_text
        from tapper.settings import source_hash

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        wall = time.time() - self.started
        stamp = {
            "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": commit or git_commit(), "tapper_source": source_hash(), "machine": machine(),
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
        if self.plot is not None:
            png = out_dir / f"{self.name}.png"
            save_plot(png, self.plot)
            written.append(png)
            lines += [f"![{self.title}]({png.name})", ""]
        atomic_write_text(written[1], "\n".join(lines))
        if self.answers:
            written.append(write_answers(out_dir, self.name, self.task, self.answers, stamp))
        return written

    def text(self) -> str:
        """The tables and notes as the console shows them."""
        parts = [table.markdown() + "\n" for table in self.tables]
        return "\n".join(parts + [f"- {note}" for note in self.notes])


def write_answers(out_dir: Path, name: str, task: str | None, answers: dict[str, dict[str, str]],
                  stamp: dict[str, Any]) -> Path:
    """out_dir/answers/<name>.json: each method's answers in LaMP's output format, under the run's stamp."""
    from tapper.io_utils import atomic_write_text

    path = Path(out_dir) / ANSWERS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    methods = {method: {"task": task, "golds": [{"id": i, "output": a} for i, a in preds.items()]}
               for method, preds in answers.items()}
    atomic_write_text(path, json.dumps({"benchmark": name, **stamp, "task": task, "methods": methods}, indent=1,
                                       ensure_ascii=False) + "\n")
    return path


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


# -- the comparison's rows, notes and plot ------------------------------------------------------------------

def main_rows(results: list[VariantResult], task: str, metric_names: list[str], golds: dict[str, str],
              seed: int) -> tuple[list[list[Any]], list[dict]]:
    """(table rows, JSON rows) of every result scored on all the target users, with 95% bootstrap CIs. A JSON
    row's "paired" holds, per reference in PAIRED_REFERENCES that ran, this row's primary metric minus the
    reference's with a paired bootstrap 95% CI (the same resamples as compare_notes, so the numbers agree)."""
    primary = primary_metric(task)[0]
    by_name = {r.name: r for r in results}
    rows, data_rows = [], []
    for r in results:
        if is_new_user_result(r.name):
            continue
        ci = bootstrap_ci(task, golds, r.predictions, n=1000, seed=seed)
        paired = {}
        for ref in PAIRED_REFERENCES:
            if ref in by_name and ref != r.name:
                low, high = paired_difference_ci(task, primary, golds, r.predictions, by_name[ref].predictions, seed)
                paired[ref] = {"metric": primary, "difference": r.metrics[primary] - by_name[ref].metrics[primary],
                               "ci95": [low, high]}
        cells = []
        for name in metric_names:
            cells += [r.metrics[name], f"{ci[name][0]:.3f} - {ci[name][1]:.3f}"]
        rows.append([r.name, *cells, r.per_user_params, round(r.train_seconds), round(r.predict_seconds)])
        data_rows.append({"method": r.name, "metrics": r.metrics, "ci95": ci, "per_user_params": r.per_user_params,
                          "train_seconds": r.train_seconds, "predict_seconds": r.predict_seconds,
                          "examples": {i: r.predictions[i] for i in list(r.predictions)[:5]},
                          # what the model saw, after every cut and template (the first few questions)
                          "prompts": r.prompts, "paired": paired})
    return rows, data_rows


def main_columns(metric_names: list[str]) -> list[str]:
    columns = ["method"]
    for name in metric_names:
        columns += [name, "95% CI"]
    return columns + ["per-user params", "train s", "predict s"]


def bar_plot(data_rows: list[dict], primary: str, direction: str) -> Callable[[Any], None]:
    """The primary metric of every method as bars with their 95% CI (TAP-PER green, floors grey)."""
    def plot(fig) -> None:
        ax = fig.subplots()
        names = [r["method"] for r in data_rows][::-1]
        values = [r["metrics"][primary] for r in data_rows][::-1]
        lows = [v - r["ci95"][primary][0] for v, r in zip(values, data_rows[::-1], strict=True)]
        highs = [r["ci95"][primary][1] - v for v, r in zip(values, data_rows[::-1], strict=True)]
        colors = ["#2a7" if n.startswith("TAP-PER") else "#999" if "floor" in n else "#68c" for n in names]
        ax.barh(names, values, xerr=[lows, highs], color=colors, capsize=3)
        ax.set_xlabel(f"{primary} ({direction} is better), 95% bootstrap CI")
        ax.tick_params(axis="y", labelsize=7)
    return plot


def compare_notes(results: list[VariantResult], task: str, primary: str, higher_better: bool,
                  golds: dict[str, str], seed: int) -> list[str]:
    """TAP-PER against each peer on the primary metric, with a paired bootstrap of the difference."""
    by_name = {r.name: r for r in results}
    tap = by_name.get("TAP-PER")
    if tap is None:
        return []
    notes = []
    for r in results:
        if r is tap or "floor" in r.name or is_new_user_result(r.name):
            continue
        low, high = paired_difference_ci(task, primary, golds, tap.predictions, r.predictions, seed)
        diff = tap.metrics[primary] - r.metrics[primary]
        better = diff > 0 if higher_better else diff < 0
        clear = (low > 0 or high < 0)
        verdict = "equal" if diff == 0 else "better" if better else "worse"
        verdict += (" (95% CI of the difference excludes 0)" if clear
                    else " (within noise: the 95% CI of the difference spans 0)")
        notes.append(f"TAP-PER vs {r.name}: {primary} {tap.metrics[primary]:.4f} vs {r.metrics[primary]:.4f}, "
                     f"difference {diff:+.4f} [{low:+.4f}, {high:+.4f}]: {verdict}.")
    return notes


def onboarding_table(results: list[VariantResult], new_users: list[VariantResult], task: str, primary: str,
                     higher_better: bool, golds: dict[str, str], n_target: int, seed: int
                     ) -> tuple[Table, list[str], list[dict]]:
    """The held-out users scored by every method that answered them, with training seconds per user."""
    ids = sorted(new_users[0].predictions)
    sub = {i: golds[i] for i in ids}
    by_name = {r.name: r for r in results}
    per_user_seconds = {r.name: (r.train_seconds, "no training: mean row + P_q from the history" if r.name == COLD
                                 else "P_u fit, shared parts frozen") for r in new_users}
    if "OPPU" in by_name:
        per_user_seconds["OPPU"] = (by_name["OPPU"].train_seconds / n_target, "own LoRA")
    if "TAP-PER" in by_name:
        per_user_seconds["TAP-PER"] = (by_name["TAP-PER"].train_seconds / n_target, "joint stage 2, amortised")
    if "task LoRA (stage 1 only)" in by_name:
        per_user_seconds["task LoRA (stage 1 only)"] = (0.0, "nothing per user")
    rows, data = [], []
    for name, (seconds, how) in per_user_seconds.items():
        r = by_name[name]
        preds = {i: r.predictions[i] for i in ids}
        value = evaluate(task, sub, preds)[primary]
        low, high = bootstrap_ci(task, sub, preds, n=1000, seed=seed)[primary]
        rows.append([name, how, value, f"{low:.3f} - {high:.3f}", seconds])
        data.append({"method": name, primary: value, "ci95": [low, high], "train_seconds_per_user": seconds})
    table = Table(f"Onboarding: the {len(ids)} target users held out of stage 2", ["method", "how", primary,
                  "95% CI", "train s / user"], rows, align_left=2)
    notes = []
    if "OPPU" in per_user_seconds:
        oppu_seconds = per_user_seconds["OPPU"][0]
        oppu_value = next(d[primary] for d in data if d["method"] == "OPPU")
        for d in data:
            if not is_new_user_result(d["method"]):
                continue
            seconds, value = d["train_seconds_per_user"], d[primary]
            at_least = value >= oppu_value if higher_better else value <= oppu_value
            speed = f"{oppu_seconds / seconds:.2f}x faster" if seconds > 0 else "no training step at all"
            met = (seconds == 0 or oppu_seconds / seconds >= 5) and at_least
            notes.append(f"Onboarding, {d['method']}: {seconds:.1f} s per new user vs OPPU's {oppu_seconds:.1f} s "
                         f"({speed}); {primary} on those users {value:.4f} vs OPPU {oppu_value:.4f} "
                         f"({'equal or better' if at_least else 'worse'}). Target (>= 5x faster to equal or "
                         f"better quality): {'met' if met else 'missed'}.")
    return table, notes, data


PER_QUESTION_METRICS = ("accuracy", "mae", "rouge-1", "rouge-L")  # the primary metrics: means over questions


def per_question_scores(task: str, metric: str, golds: dict[str, str], preds: dict[str, str]) -> list[float]:
    """metric of each question alone, in sorted question order; their mean is the metric of all of them."""
    if metric not in PER_QUESTION_METRICS:
        raise ValueError(f"{metric} is not a mean of per-question scores")
    return [evaluate(task, {q: golds[q]}, {q: preds[q]})[metric] for q in sorted(golds)]


def paired_difference_ci(task: str, metric: str, golds: dict[str, str], a: dict[str, str], b: dict[str, str],
                         seed: int, n: int = 1000) -> tuple[float, float]:
    """Percentile bootstrap of metric(a) - metric(b), resampling the same questions for both. Valid for the
    primary metrics (accuracy, MAE, ROUGE), which are means of per-question scores."""
    return mean_difference_ci(run_differences(task, metric, golds, [(a, b)]), seed, n)[1:]


def pooled_difference_ci(task: str, metric: str, golds: dict[str, str],
                         runs: list[tuple[dict[str, str], dict[str, str]]], seed: int, n: int = 1000,
                         resample_runs: bool = False) -> tuple[float, float, float]:
    """(mean, low, high) of metric(a) - metric(b) averaged over several training runs (seeds) of both, each run
    a pair (a's answers, b's answers) on the same questions (see mean_difference_ci)."""
    return mean_difference_ci(run_differences(task, metric, golds, runs), seed, n, resample_runs)


def run_differences(task: str, metric: str, golds: dict[str, str],
                    runs: list[tuple[dict[str, str], dict[str, str]]]) -> np.ndarray:
    """(runs, questions) array of metric(a) - metric(b) per question, one row per pair (a's, b's answers)."""
    import numpy as np

    if not runs:
        raise ValueError("needs at least one run (a pair of answer sets)")
    return np.array([np.subtract(per_question_scores(task, metric, golds, a),
                                 per_question_scores(task, metric, golds, b)) for a, b in runs])


def mean_difference_ci(diffs: np.ndarray, seed: int, n: int = 1000,
                       resample_runs: bool = False) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean of a (runs, questions) array of paired differences.
    Each draw resamples questions, the same ones in every run, so a question's difference counts once, averaged
    over the runs. With `resample_runs` it also draws the runs with replacement (a two-level bootstrap): the
    interval then holds the spread between training runs as well as between users, which a handful of runs
    estimates only roughly. One row is the plain paired bootstrap."""
    import numpy as np

    diffs = np.atleast_2d(diffs)
    rng = np.random.default_rng(seed)
    n_runs, n_questions = diffs.shape
    means = []
    for _ in range(n):
        rows = rng.integers(0, n_runs, n_runs) if resample_runs else np.arange(n_runs)
        means.append(diffs[np.ix_(rows, rng.integers(0, n_questions, n_questions))].mean())
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)
