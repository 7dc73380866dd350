"""How much a user's own history says about their next answer, before any model, per task; beside it, how far
TAP-PER got past the same-budget control there.

    .venv/bin/python bench/personal_signal.py          # every task of results/README 2.1, its table's users

For each task, its user lookup (the floor that reads only the user's history: the most frequent past label, the
mean past rating, the latest past output) answers each target twice: from the user's own history, and from
another target user's history (the histories handed round after a seeded shuffle; --draws rounds, averaged per
question). Both answers ignore the question's content, so their difference is the personal signal alone: what
knowing whose history it is adds to knowing what such histories look like. Its paired 95% CI resamples users.
TAP-PER minus the control comes from the task's kept table (results/quality_<label>.json).

Writes results/personal_signal.{json,md,png}.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common import RESULTS, Result, Table
from pair_results import choose_floor
from quality import choose_users
from quality_summary import CONTROL, TAPPER, load_task, task_rows, verdict

from tapper.baselines.floors import floors
from tapper.compare.report import mean_difference_ci, run_differences
from tapper.data.records import LampSplit
from tapper.experiment import primary_metric
from tapper.metrics import evaluate


@dataclass(frozen=True)
class TaskUsers:
    """One task as its quality table chose its users, and the words naming two of its floors: the user lookup
    (reads only the history) and the user-blind floor (never reads it)."""

    label: str
    task: str
    users: int
    lookup: str
    blind: str
    source: str | None = None
    stage1_users: int = 300


TASKS = (
    TaskUsers("LaMP_2N", "LaMP_2N", 96, "most frequent", "majority"),
    TaskUsers("LaMP_2", "LaMP_2", 100, "most frequent", "majority"),
    TaskUsers("LaMP_3", "LaMP_3", 69, "mean past", "always 5"),
    TaskUsers("LaMP_3_magazine", "LaMP_3", 100, "mean past", "always 5", source="magazine"),
    TaskUsers("LaMP_5R", "LaMP_5R", 60, "most recent", "words of the post", stage1_users=200),
    TaskUsers("LaMP_4", "LaMP_4", 114, "most recent", "words of the article"),
    TaskUsers("LaMP_7", "LaMP_7", 300, "last past tweet", "copy the input"),
    # the same users on the second backbone: the same signal, TAP-PER's gap from Gemma's tables
    TaskUsers("LaMP_2N_gemma3-270m", "LaMP_2N", 96, "most frequent", "majority"),
    TaskUsers("LaMP_3_gemma3-270m", "LaMP_3", 69, "mean past", "always 5"),
)


def handed_round(target: LampSplit, seed: int) -> LampSplit:
    """The same questions, each with the history of another target user (a shuffled cycle: nobody keeps their
    own, and every history is used once)."""
    order = list(target.questions)
    random.Random(seed).shuffle(order)
    given = {q.id: order[(i + 1) % len(order)].profile for i, q in enumerate(order)}
    return replace(target, questions=[replace(q, profile=given[q.id]) for q in target.questions])


def personal_signal(target: LampSplit, others: LampSplit, task: TaskUsers, draws: int, seed: int) -> dict[str, Any]:
    """The lookup from the user's own history against from another user's (averaged over `draws` hand-rounds),
    and against the user-blind floor."""
    if len(target.questions) < 2:
        raise SystemExit(f"{target.task}: needs at least two target users to hand histories round")
    metric, higher = primary_metric(target.task)
    golds = {q.id: target.gold(q.id) for q in target.questions}
    made = floors(target.task, target, others)  # once for both of the user's own floors
    name, own = choose_floor(made, task.lookup, target.task)
    blind_name, blind = choose_floor(made, task.blind, target.task)
    foreign = [choose_floor(floors(target.task, handed_round(target, seed + d), others), task.lookup,
                            target.task)[1] for d in range(draws)]

    def paired(runs: list[tuple[dict[str, str], dict[str, str]]]) -> dict[str, Any]:
        mean, low, high = mean_difference_ci(run_differences(target.task, metric, golds, runs), seed)
        return {"difference": mean, "ci95": [low, high], "verdict": verdict(mean, [low, high], higher)}

    return {"lookup": name, "blind_floor": blind_name, "metric": metric, "higher_is_better": higher,
            "users": len(golds), "own": evaluate(target.task, golds, own)[metric],
            "other": sum(evaluate(target.task, golds, f)[metric] for f in foreign) / draws,
            "blind": evaluate(target.task, golds, blind)[metric],
            "own_vs_other": paired([(own, f) for f in foreign]), "own_vs_blind": paired([(own, blind)])}


def tapper_gap(label: str, results: Path) -> dict[str, Any] | None:
    """TAP-PER minus the control from the task's kept table, or None where the table lacks either."""
    path = results / f"quality_{label}.json"
    if not path.is_file():
        return None
    data = load_task(path)
    rows = {r["method"]: r for r in task_rows(data, path.with_suffix(".md"))[0]}
    gap = rows.get(TAPPER, {}).get("vs_control")
    if gap is None or CONTROL not in rows or gap["ci95"] is None:
        return None
    higher = primary_metric(data["task"])[1]
    return {**gap, "verdict": verdict(gap["difference"], gap["ci95"], higher)}


PANELS = (("own_vs_other", "user lookup: own history minus another user's"),
          ("own_vs_blind", "user lookup minus the user-blind floor"))


def plot_signal(rows: list[dict[str, Any]]):
    """Per panel, each task's signal (x) against TAP-PER minus the control (y), both with their 95% CIs, signed
    so that right and up are better on every metric."""
    def draw(fig) -> None:
        fig.set_size_inches(11, 4.8)
        for i, (key, title) in enumerate(PANELS):
            ax = fig.add_subplot(1, 2, i + 1)
            for row in rows:
                s, g = row["signal"], row["tapper_vs_control"]
                if g is None:
                    continue
                sign = 1.0 if s["higher_is_better"] else -1.0
                x, y = sign * s[key]["difference"], sign * g["difference"]
                xs, ys = sorted(sign * v for v in s[key]["ci95"]), sorted(sign * v for v in g["ci95"])
                ax.errorbar(x, y, xerr=[[x - xs[0]], [xs[1] - x]], yerr=[[y - ys[0]], [ys[1] - y]], fmt="o",
                            color="#2a7" if "ahead" in g["verdict"] else "#999", capsize=3)
                ax.annotate(row["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            ax.axhline(0, color="#999", ls="--", lw=1)
            ax.axvline(0, color="#999", ls="--", lw=1)
            ax.set_xlabel(f"{title} (better ->)", fontsize=8)
            ax.set_ylabel("TAP-PER minus the same-budget control (better ->)", fontsize=8)
            ax.set_title(f"TAP-PER's gain against: {title}", fontsize=9)
    return draw


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=",".join(t.label for t in TASKS),
                    help=f"which tasks (default all: {', '.join(t.label for t in TASKS)})")
    ap.add_argument("--draws", type=int, default=20, help="hand-rounds of other users' histories, averaged")
    ap.add_argument("--seed", type=int, default=0, help="the shuffle and bootstrap seed (the users' choice is 0, "
                                                         "as the tables had it)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the quality tables are read from")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    known = {t.label: t for t in TASKS}
    wanted = [w.strip() for w in args.labels.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        ap.error(f"--labels: unknown {unknown}; known: {sorted(known)}")
    if args.draws < 1:
        ap.error("--draws: at least 1")
    rows = []
    for t in (known[w] for w in wanted):
        target, others = choose_users(t.task, t.users, t.stage1_users, 0, source=t.source)[:2]
        rows.append({"label": t.label, "signal": personal_signal(target, others, t, args.draws, args.seed),
                     "tapper_vs_control": tapper_gap(t.label, args.results)})

    def ci(d: dict[str, Any] | None) -> str:
        return "-" if d is None else "{:+.4f} [{:+.4f}, {:+.4f}] {}".format(d["difference"], *d["ci95"], d["verdict"])

    table = Table("The user lookup (reads only the history) from the user's own history, from another user's, and "
                  "the user-blind floor; TAP-PER minus the control",
                  ["task (users, metric)", "user lookup", "own history", "another user's", "own minus another's",
                   "user-blind floor", "its score", "lookup minus user-blind", "TAP-PER minus control"],
                  [[f"{r['label']} ({r['signal']['users']}, {r['signal']['metric']})", r["signal"]["lookup"],
                    r["signal"]["own"], r["signal"]["other"], ci(r["signal"]["own_vs_other"]),
                    r["signal"]["blind_floor"], r["signal"]["blind"], ci(r["signal"]["own_vs_blind"]),
                    ci(r["tapper_vs_control"])] for r in rows])

    def ahead(key: str) -> str:
        return ", ".join(r["label"] for r in rows if "ahead" in r["signal"][key]["verdict"]) or "none"

    tapper_ahead = [r["label"] for r in rows
                    if r["tapper_vs_control"] and "ahead" in r["tapper_vs_control"]["verdict"]]
    notes = [f"The own history is ahead of another user's (a personal signal outside noise) on: "
             f"{ahead('own_vs_other')}.",
             f"The user lookup is ahead of the user-blind floor on: {ahead('own_vs_blind')}.",
             f"TAP-PER is ahead of the control (outside noise or at its edge) on: "
             f"{', '.join(tapper_ahead) or 'none'}.",
             f"Another user's history: {args.draws} hand-rounds (seeds {args.seed}..{args.seed + args.draws - 1}), "
             "each answer scored, averaged per question; every CI is paired and resamples users (1,000 draws). On "
             "MAE a negative difference is the first one's win.",
             "Users as the tables chose them (bench/quality.py's choose_users, seed 0). A lookup falls back to the "
             "task's user-blind answer for a user without history (the majority label, 5, the input's lead).",
             "TAP-PER minus control: one training seed, the task's table (results/quality_<label>.json)."]
    Result("personal_signal", "Personal signal in the history alone, per task, against TAP-PER's gain",
           {"draws": args.draws, "seed": args.seed, "tasks": rows}, [table], notes).write_and_print(
        args.out, plot=plot_signal(rows))


if __name__ == "__main__":
    main()
