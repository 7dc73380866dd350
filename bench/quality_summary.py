"""One summary of the per-task quality comparisons (results/quality_<label>.json from bench/quality.py).

    .venv/bin/python bench/quality_summary.py   # every quality_*.json but *_val, *_val_latest, *_compare_cli
    .venv/bin/python bench/quality_summary.py --labels LaMP_2N,LaMP_3 --out /tmp/qs

First a scoreboard (one row per task): TAP-PER against the control, each peer, the best floor and each
ablation, with the paired 95% CI and the verdict (ahead, tie, behind). Then one row per (task, method): the
task's primary metric with its 95% bootstrap CI, and the difference against the same-budget control and
against TAP-PER (this method minus the reference, paired 95% CI). Paired
intervals need each method's per-question answers, which the JSON does not keep (only five examples), so
they are read from the rows' "paired" entries (tapper.compare.report writes them); for results written
before that, from the "TAP-PER vs ..." notes of the task's own .md, only where the note's two values match
the JSON's. Those notes give every method against TAP-PER but, against the control, TAP-PER alone; a missing
interval is shown as "-", never replaced by one from the unpaired CIs. Last, one row per (seed spread, opponent)
from results/seed_spread_*.json (bench/seed_spread.py): how the verdict held over training seeds and the pooled
difference with users and seeds resampled, since one table's interval covers its users, not its training run.
A peer rerun after a fix, kept apart from its task's table (trained later, on other code), replaces one
scoreboard cell with --rerun LABEL:COLUMN=NAME, where results/NAME.json is either bench/pair_results.py's output
(its first pair of TAP-PER with a method of that column) or a quality table holding both TAP-PER and that
method (its paired entry); the cell says "rerun" and a note keeps the cell it replaced:

    .venv/bin/python bench/quality_summary.py --rerun LaMP_2N_s2ep4:PAG=pag_whole_LaMP_2N_s2ep4

Writes results/quality_summary.{json,md,png} and the scoreboard as a figure, quality_summary_scoreboard.png.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from common import RESULTS, Result, Table

from tapper.compare.report import CONTROL, save_plot
from tapper.experiment import primary_metric

TAPPER = "TAP-PER"
ZERO_SHOT = "zero-shot backbone"
SKIPPED_SUFFIXES = ("_val", "_val_latest", "_compare_cli")
BOARD_PNG = "quality_summary_scoreboard.png"


class SummaryError(Exception):
    """A results file that is missing or not in bench/quality.py's shape; the message names the file."""


def default_labels(results: Path) -> list[str]:
    labels = sorted(p.stem.removeprefix("quality_") for p in results.glob("quality_*.json"))
    return [x for x in labels if x != "summary" and not x.endswith(SKIPPED_SUFFIXES)]


def load_task(path: Path) -> dict[str, Any]:
    """A quality JSON, checked for what the summary reads."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such results file (run bench/quality.py for it first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SummaryError(f"{path}: not a readable JSON file ({err})") from None
    try:
        metric = primary_metric(data["task"])[0]
        if not data["results"]:
            raise ValueError("'results': empty")
        for row in data["results"]:
            if not isinstance(row["method"], str) or len(row["ci95"][metric]) != 2:
                raise ValueError(f"row {row['method']!r}")
            [float(x) for x in (row["metrics"][metric], *row["ci95"][metric])]
    except (KeyError, TypeError, ValueError) as err:
        raise SummaryError(f"{path}: not a bench/quality.py result (missing or bad {err})") from None
    return data


NOTE = re.compile(r"^- TAP-PER vs (?P<name>.+?): (?P<metric>\S+) (?P<tap>-?[\d.]+) vs (?P<other>-?[\d.]+), "
                  r"difference [+-][\d.]+ \[(?P<low>[+-][\d.]+), (?P<high>[+-][\d.]+)\]:")


def paired_from_notes(md: Path, data: dict[str, Any]) -> dict[str, list[float]]:
    """{method: paired 95% CI of TAP-PER minus it} from the report's notes. A note counts only if its two
    values are the JSON's (to the 4 decimals shown), so an .md left from another run is not mixed in."""
    if not md.is_file():
        return {}
    metric = primary_metric(data["task"])[0]
    values = {r["method"]: r["metrics"][metric] for r in data["results"]}
    found = {}
    for line in md.read_text().splitlines():
        m = NOTE.match(line)
        if not m or m["metric"] != metric or m["name"] not in values or TAPPER not in values:
            continue
        if abs(float(m["tap"]) - values[TAPPER]) < 6e-5 and abs(float(m["other"]) - values[m["name"]]) < 6e-5:
            found[m["name"]] = [float(m["low"]), float(m["high"])]
    return found


def task_rows(data: dict[str, Any], md: Path) -> tuple[list[dict[str, Any]], str]:
    """(one summary row per method, where the paired CIs came from)."""
    metric = primary_metric(data["task"])[0]
    values = {r["method"]: r["metrics"][metric] for r in data["results"]}
    kept = any("paired" in r for r in data["results"])
    notes = {} if kept else paired_from_notes(md, data)
    rows = []
    for r in data["results"]:
        row = {"method": r["method"], "metric": metric, "value": values[r["method"]], "ci95": r["ci95"][metric]}
        for key, ref in (("vs_control", CONTROL), ("vs_tapper", TAPPER)):
            if ref not in values or ref == r["method"]:
                row[key] = None
                continue
            ci = None
            if kept:
                ci = (r.get("paired", {}).get(ref) or {}).get("ci95")
            elif ref == TAPPER and r["method"] in notes:  # the note is TAP-PER minus this method: flip it
                ci = flipped(notes[r["method"]])
            elif r["method"] == TAPPER and ref in notes:
                ci = notes[ref]
            row[key] = {"difference": values[r["method"]] - values[ref], "ci95": ci}
        rows.append(row)
    source = "json" if kept else f"{md.name} notes" if notes else "none"
    return rows, source


def _diff_cells(d: dict[str, Any] | None) -> list[str]:
    if d is None:
        return ["-", "-"]
    ci = d["ci95"]
    return [f"{d['difference']:+.4f}", "-" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"]


def task_table(label: str, data: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    metric, higher = primary_metric(data["task"])
    task = label if label == data["task"] else f"{label} ({data['task']})"
    title = (f"{task}: {data.get('target_users')} users, backbone {data.get('backbone')}, "
             f"commit {data.get('commit')}, finished {data.get('finished_utc')} UTC; {metric}, "
             f"{'higher' if higher else 'lower'} is better. Command: `{data.get('command')}`")
    cells = [[r["method"], r["value"], f"{r['ci95'][0]:.3f} - {r['ci95'][1]:.3f}",
              *_diff_cells(r["vs_control"]), *_diff_cells(r["vs_tapper"])] for r in rows]
    return Table(title, ["method", metric, "95% CI", "- control", "paired 95% CI", "- TAP-PER", "paired 95% CI"],
                 cells)


# What TAP-PER is held against, in the scoreboard's column order: (column, how a method's name starts). RAG and
# PAG fine-tuned on the targets' history pairs too (tapper.compare's peer variants) are columns of their own,
# shown once some task has them (a rerun file fills the cell, as their runs are kept apart from the tables).
OPPONENTS = [("control", CONTROL), ("RAG", "RAG"), ("RAG+targets", "RAG+targets"), ("PAG", "PAG"),
             ("PAG+targets", "PAG+targets"), ("OPPU", "OPPU"), ("PER-PCS", "PER-PCS"),
             ("PPlug", "PPlug"), ("best floor", None), ("w/o P_u", "TAP-PER without P_u"),
             ("w/o P_q", "TAP-PER without P_q"), ("w/o time decay", "TAP-PER without time decay"),
             ("w/o bridge", "TAP-PER without the bridge")]


VERDICTS = ("ahead", "ahead, at the edge", "tie", "behind, at the edge", "behind", "no paired CI")

# bench/seed_spread.py names opponents by their --methods key; the seed table shows the scoreboard's column names
SPREAD_NAMES = {"nonpersonal": "control", "rag": "RAG", "rag-targets": "RAG+targets", "pag": "PAG",
                "pag-targets": "PAG+targets", "oppu": "OPPU", "perpcs": "PER-PCS",
                "pplug": "PPlug", "no-pu": "w/o P_u", "no-pq": "w/o P_q", "no-time": "w/o time decay",
                "no-bridge": "w/o bridge"}


def verdict(diff: float, ci: list[float] | None, higher: bool) -> str:
    """TAP-PER against one method, from TAP-PER minus it: "ahead" / "behind" when the paired CI leaves zero on
    one side, "ahead, at the edge" when it ends exactly at zero (a discrete metric on ~100 users often does),
    "tie" when it spans zero, "no paired CI" when none was kept (the sign of the difference alone decides nothing)."""
    if ci is None:
        return "no paired CI"
    good = (lambda x: x > 0) if higher else (lambda x: x < 0)
    near, far = (ci[0], ci[1]) if higher else (ci[1], ci[0])  # the bound nearest to "no better", the other
    if good(near):
        return "ahead"
    if good(-far):
        return "behind"
    if near == 0 and good(diff):
        return "ahead, at the edge"
    if far == 0 and good(-diff):
        return "behind, at the edge"
    return "tie"


def is_method(name: str, prefix: str) -> bool:
    """Whether a result's name is this method's: the name itself or it with a parenthesized detail, e.g.
    "RAG (k=4, bm25, ...)" for "RAG" or "TAP-PER (runs/x.json)" for "TAP-PER", but not "TAP-PER without P_u"."""
    return name == prefix or name.startswith(prefix + " (")


def flipped(ci: list[float]) -> list[float]:
    """The CI of b minus a from that of a minus b (0.0 -: no "-0.000")."""
    return [0.0 - ci[1], 0.0 - ci[0]]


def cell_of(method: str, diff: float, ci: list[float] | None, higher: bool) -> dict[str, Any]:
    """A scoreboard cell: TAP-PER minus `method`, its paired CI and the verdict."""
    return {"method": method, "difference": diff, "ci95": ci, "verdict": verdict(diff, ci, higher)}


def verdict_counts(cells: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {v: sum(c["verdict"] == v for c in cells.values()) for v in VERDICTS}


def scoreboard(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task, one column per opponent: TAP-PER minus it, its paired CI and the verdict. The floor
    column takes the task's best floor (the one hardest to beat). Ablations: "ahead" means the part helps."""
    board = []
    for t in tasks:
        by_name = {r["method"]: r for r in t["rows"]}
        floors = [r for r in t["rows"] if "floor" in r["method"]]
        best_floor = (max if t["higher_better"] else min)(floors, key=lambda r: r["value"]) if floors else None
        cells = {}
        for column, prefix in OPPONENTS:
            row = best_floor if prefix is None else next(
                (r for name, r in by_name.items() if is_method(name, prefix)), None)
            if row is None or row["vs_tapper"] is None:
                continue
            d = row["vs_tapper"]  # this method minus TAP-PER: flip it to TAP-PER minus this method
            cells[column] = cell_of(row["method"], 0.0 - d["difference"],
                                    None if d["ci95"] is None else flipped(d["ci95"]), t["higher_better"])
        board.append({"label": t["label"], "metric": t["metric"], "higher_better": t["higher_better"],
                      "target_users": t["target_users"], "cells": cells, "counts": verdict_counts(cells)})
    return board


def parse_rerun(text: str) -> tuple[str, str, str]:
    """"LABEL:COLUMN=NAME" -> (label, column, name); the column is one of the scoreboard's opponents."""
    head, sep, name = text.partition("=")
    label, colon, column = head.rpartition(":")
    if not (sep and colon and label and name):
        raise SummaryError(f"--rerun {text!r}: expected LABEL:COLUMN=NAME, e.g. LaMP_2N:PAG=pag_whole_LaMP_2N")
    columns = [c for c, prefix in OPPONENTS if prefix is not None]
    if column not in columns:
        raise SummaryError(f"--rerun {text!r}: no scoreboard column {column!r}; the columns: {columns}")
    return label, column, name


def rerun_cell(path: Path, column: str, higher: bool) -> dict[str, Any]:
    """The scoreboard cell (TAP-PER minus the column's method) that a rerun's results file gives: the first
    pair of a bench/pair_results.py output with A TAP-PER and B the column's method, or the paired entry of that
    method in a quality table that also ran TAP-PER."""
    prefix = dict(OPPONENTS)[column]
    try:
        data = json.loads(path.read_text())
        if "pairs" in data:  # A minus B, A TAP-PER
            found = next(((p["b"], p["difference"], p["ci95"]) for p in data["pairs"]
                          if is_method(p["b"], prefix) and is_method(p["a"], TAPPER)), None)
        else:  # the method minus TAP-PER: flipped
            found = next(((r["method"], 0.0 - r["paired"][TAPPER]["difference"], flipped(r["paired"][TAPPER]["ci95"]))
                          for r in data["results"] if is_method(r["method"], prefix) and TAPPER in r.get("paired", {})),
                         None)
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such results file (--rerun)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SummaryError(f"{path}: not a readable JSON file ({err})") from None
    except (KeyError, TypeError, IndexError) as err:
        raise SummaryError(f"{path}: neither a bench/pair_results.py output nor a quality table (missing or bad "
                           f"{err})") from None
    if found is None:
        raise SummaryError(f"{path}: no {column} result paired with TAP-PER")
    method, diff, ci = found
    return {**cell_of(method, float(diff), [float(ci[0]), float(ci[1])], higher), "rerun": path.stem}


def apply_reruns(board: list[dict[str, Any]], reruns: list[tuple[str, str, str]], results: Path) -> list[str]:
    """Replace each rerun's scoreboard cell (and the row's verdict counts); one note per replaced cell."""
    by_label = {b["label"]: b for b in board}
    notes = []
    for label, column, name in reruns:
        if label not in by_label:
            raise SummaryError(f"--rerun {label}:{column}={name}: {label} is not one of the summarized labels "
                               f"{sorted(by_label)}")
        b = by_label[label]
        new = rerun_cell(results / f"{name}.json", column, b["higher_better"])
        old = b["cells"].get(column)
        b["cells"][column] = new
        b["counts"] = verdict_counts(b["cells"])
        before = "not run" if old is None else f"{old['verdict']} {old['difference']:+.3f}"
        notes.append(f"{label}, {column}: the rerun in {name}.json ({new['method']}); the task table's cell was "
                     f"{before}.")
    return notes


def board_table(board: list[dict[str, Any]]) -> Table:
    def cell(c: dict[str, Any] | None) -> str:
        if c is None:
            return "not run"
        ci = "" if c["ci95"] is None else f" [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        return f"{c['verdict']}: {c['difference']:+.3f}{ci}" + (f" (rerun: {c['rerun']})" if "rerun" in c else "")

    columns = board_columns(board)
    return Table("Scoreboard: TAP-PER minus each opponent (paired 95% CI) and the verdict, per task",
                 ["task", "TAP-PER is", *columns],
                 [[f"{b['label']} ({b['target_users']} users, {b['metric']})",
                   "; ".join(f"{n} {v}" for v, n in b["counts"].items() if n),
                   *[cell(b["cells"].get(c)) for c in columns]] for b in board])


def board_columns(board: list[dict[str, Any]]) -> list[str]:
    """The opponents some task has, in OPPONENTS' order (a column run nowhere is left out)."""
    return [c for c, _ in OPPONENTS if any(c in b["cells"] for b in board)]


def advantage(cell: dict[str, Any], higher: bool) -> tuple[float, list[float] | None]:
    """TAP-PER's advantage over a cell's method and its paired CI, oriented so that above zero is TAP-PER
    better whatever the metric's direction (on MAE, the method minus TAP-PER)."""
    if higher:
        return cell["difference"], cell["ci95"]
    return 0.0 - cell["difference"], None if cell["ci95"] is None else flipped(cell["ci95"])


VERDICT_COLORS = {"ahead": "#1a8a4a", "ahead, at the edge": "#7cc49a", "tie": "#888", "behind, at the edge": "#e39a8f",
                  "behind": "#c0392b", "no paired CI": "#bbb"}


def plot_board(board: list[dict[str, Any]]):
    """The scoreboard as a figure: one panel per opponent, one row per task, TAP-PER's advantage with its paired
    95% CI (right of zero: TAP-PER better), coloured by verdict; a rerun cell is an open marker."""
    columns = board_columns(board)

    def draw(fig) -> None:
        cols = min(len(columns), 4)
        nrows = -(-len(columns) // cols)
        fig.set_size_inches(4.2 * cols, (0.26 * len(board) + 1.4) * nrows)
        rows = board[::-1]  # first task on top
        for i, column in enumerate(columns):
            ax = fig.add_subplot(nrows, cols, i + 1)
            ax.axvline(0.0, color="#444", lw=0.8)
            for y, b in enumerate(rows):
                cell = b["cells"].get(column)
                if cell is None:
                    continue
                value, ci = advantage(cell, b["higher_better"])
                color = VERDICT_COLORS[cell["verdict"]]
                xerr = None if ci is None else [[value - ci[0]], [ci[1] - value]]
                ax.errorbar(value, y, xerr=xerr, fmt="o", color=color, capsize=2, ms=5,
                            mfc="white" if "rerun" in cell else color)
            ax.set_yticks(range(len(rows)), [f"{b['label']} ({b['metric']})" for b in rows] if i % cols == 0
                          else [], fontsize=7)
            ax.set_ylim(-0.6, len(rows) - 0.4)
            ax.grid(axis="y", color="#eee", lw=0.5)
            ax.set_title(f"TAP-PER vs {column}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel("TAP-PER better ->  (task's metric; MAE negated)", fontsize=7)
    return draw


def _verdict_order(v: str) -> int:
    return VERDICTS.index(v) if v in VERDICTS else len(VERDICTS)


def default_spreads(results: Path) -> list[str]:
    return sorted(p.stem.removeprefix("seed_spread_") for p in results.glob("seed_spread_*.json"))


def seed_rows(label: str, path: Path) -> list[dict[str, Any]]:
    """One row per opponent of a seed_spread_<label>.json: the seeds, the verdict per seed, whether the sign held,
    and the pooled difference (absent where a single seed had answers to pool)."""
    try:
        data = json.loads(path.read_text())
        rows = []
        for b in data["bs"]:
            gap = data["gaps"][b]
            pooled = gap.get("pooled") or None
            rows.append({
                "spread": label, "task": data["task"], "users": data["users"], "metric": data["metric"],
                "opponent": SPREAD_NAMES.get(b, b) if data["a"] == "tapper" else f"{data['a']} minus {b}",
                "seeds": sorted(data["per_seed"], key=int),
                "seed_verdicts": {v: gap["verdicts"][v] for v in sorted(gap["verdicts"], key=_verdict_order)},
                "same_sign": bool(gap["same_sign"]), "mean": float(gap["mean"]),
                "pooled": None if pooled is None else {
                    "seeds": pooled["seeds"], "difference": float(pooled["difference"]),
                    "ci95": [float(x) for x in pooled["users_and_seeds"]["ci95"]],
                    "verdict": pooled["users_and_seeds"]["verdict"]}})
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such seed spread (run bench/seed_spread.py for it first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SummaryError(f"{path}: not a readable JSON file ({err})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SummaryError(f"{path}: not a bench/seed_spread.py result (missing or bad {err})") from None
    return rows


def seed_table(rows: list[dict[str, Any]]) -> Table:
    def pooled(r: dict[str, Any]) -> str:
        p = r["pooled"]
        if p is None:
            return "-"
        return (f"{p['verdict']}: {p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] "
                f"(seeds {', '.join(p['seeds'])})")

    return Table("Over training seeds: TAP-PER minus each opponent per seed, and pooled (users and seeds resampled)",
                 ["seed spread (task, users, metric)", "opponent", "seeds", "verdict per seed", "same sign",
                  "mean difference", "pooled, 95% CI"],
                 [[f"{r['spread']} ({r['task']}, {r['users']}, {r['metric']})", r["opponent"],
                   ", ".join(r["seeds"]), "; ".join(f"{n} {v}" for v, n in r["seed_verdicts"].items()),
                   "yes" if r["same_sign"] else "no", f"{r['mean']:+.3f}", pooled(r)] for r in rows])


def plot_tasks(tasks: list[dict[str, Any]]):
    """One panel per task: each method's primary metric with its 95% CI; TAP-PER green and bold, the control
    orange, floors grey with a dashed line at their value (what a method has to beat)."""
    def draw(fig) -> None:
        cols = min(len(tasks), 3)
        nrows = -(-len(tasks) // cols)
        most = max(len(t["rows"]) for t in tasks)
        fig.set_size_inches(5.5 * cols, (0.28 * most + 1.6) * nrows)
        for i, t in enumerate(tasks):
            ax = fig.add_subplot(nrows, cols, i + 1)
            rows = t["rows"][::-1]  # first method on top
            for y, r in enumerate(rows):
                name = r["method"]
                color = "#2a7" if name.startswith(TAPPER) else "#999" if "floor" in name else \
                    "#e80" if name == CONTROL else "#68c"
                low, high = r["ci95"]
                ax.errorbar(r["value"], y, xerr=[[r["value"] - low], [high - r["value"]]], fmt="o", color=color,
                            ms=8 if name == TAPPER else 5, capsize=3)
                if "floor" in name:
                    ax.axvline(r["value"], color="#999", ls="--", lw=1)
                if name == TAPPER:
                    ax.axvspan(low, high, color="#2a7", alpha=0.08)
            # The zero-shot backbone can sit far from everything else (LaMP-3: MAE 3.7 against 0.4-0.6), which
            # would squeeze every other interval into a few pixels: keep the axis on the rest, mark it at the edge.
            rest = [r["ci95"] for r in rows if r["method"] != ZERO_SHOT]
            lo, hi = (min(c[0] for c in rest), max(c[1] for c in rest)) if rest else (0.0, 0.0)
            pad = 0.08 * ((hi - lo) or 1.0)
            far = [(y, r) for y, r in enumerate(rows) if rest and r["method"] == ZERO_SHOT
                   and not lo - 3 * (hi - lo) <= r["value"] <= hi + 3 * (hi - lo)]
            if far:
                ax.set_xlim(lo - pad, hi + pad)
                for y, r in far:
                    right = r["value"] > hi
                    ax.annotate(f"{r['value']:.3g} {'>' if right else '<'}", (hi + pad if right else lo - pad, y),
                                ha="right" if right else "left", va="center", fontsize=7, color="#68c")
            ax.set_yticks(range(len(rows)), [r["method"] for r in rows], fontsize=7)
            for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
                if r["method"] == TAPPER:
                    tick.set_fontweight("bold")
            ax.set_title(f"{t['label']} ({t['target_users']} users)", fontsize=9)
            ax.set_xlabel(f"{t['metric']} ({'higher' if t['higher_better'] else 'lower'} is better), "
                          "95% CI; dashed: floors", fontsize=8)
    return draw


def summarize(labels: list[str], results: Path, spreads: list[str] | None = None,
              reruns: list[tuple[str, str, str]] | None = None) -> Result:
    """spreads: seed_spread_<label>.json labels for the seed table (None: every one in results); reruns:
    (label, column, results file stem) of each scoreboard cell a peer's rerun replaces (see parse_rerun)."""
    if not labels:
        raise SummaryError(f"{results}: no quality_*.json results to summarize")
    tasks, tables = [], []
    for label in labels:
        path = results / f"quality_{label}.json"
        data = load_task(path)
        rows, source = task_rows(data, path.with_suffix(".md"))
        metric, higher = primary_metric(data["task"])
        tasks.append({"label": label, "file": path.name, "task": data["task"], "metric": metric,
                      "higher_better": higher, "target_users": data.get("target_users"),
                      "backbone": data.get("backbone"), "commit": data.get("commit"), "command": data.get("command"),
                      "finished_utc": data.get("finished_utc"), "tapper_source": data.get("tapper_source"),
                      "paired_source": source, "rows": rows})
        tables.append(task_table(label, data, rows))
    board = scoreboard(tasks)
    rerun_notes = apply_reruns(board, reruns or [], results)
    spreads = default_spreads(results) if spreads is None else spreads
    over_seeds = [r for label in spreads for r in seed_rows(label, results / f"seed_spread_{label}.json")]
    commits = {t["label"]: t["commit"] for t in tasks}
    notes = ["Scoreboard: TAP-PER minus the opponent, so on MAE a negative difference is TAP-PER's win; in the "
             "per-task tables, differences are the method minus the reference. Paired CIs resample the same "
             "questions for both methods."]
    if len(set(commits.values())) == 1:
        notes.append(f"Every task's result comes from commit {next(iter(commits.values()))}.")
    else:
        notes.append("The tasks come from different commits: " + ", ".join(f"{k} {v}" for k, v in commits.items())
                     + ".")
    for t in tasks:
        if t["paired_source"] == "none":
            notes.append(f"{t['label']}: no paired CIs stored in {t['file']} or its .md notes.")
        elif t["paired_source"] != "json":
            notes.append(f"{t['label']}: paired CIs read from {t['paired_source']} ({t['file']} predates the "
                         "JSON's paired entries), which compare TAP-PER with each method but the floors; against the "
                         "control they exist for TAP-PER only.")
    notes += rerun_notes
    notes.append(f"The scoreboard as a figure: {BOARD_PNG} (one panel per opponent, TAP-PER's advantage with its "
                 "paired 95% CI, right of zero = TAP-PER better; an open marker is a rerun's cell). Below the "
                 "tables, each task's methods with their own 95% CIs.")
    if over_seeds:
        notes.append("Over training seeds: each seed spread's own users and tables (its command is in "
                     "results/seed_spread_<label>.md); the pooled difference averages the seeds whose answers were "
                     "kept, and its CI resamples users and seeds. On MAE a negative difference is TAP-PER's win.")
    return Result("quality_summary", "Quality on every task: primary metric, 95% CIs, differences vs the "
                  "control and TAP-PER", {"labels": labels, "commits": commits, "scoreboard": board, "tasks": tasks,
                                          "over_seeds": over_seeds,
                                          "reruns": [f"{a}:{b}={c}" for a, b, c in reruns or []]},
                  [board_table(board), *([seed_table(over_seeds)] if over_seeds else []), *tables], notes,
                  plot=plot_tasks(tasks))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=None, help="comma-separated, e.g. LaMP_2N,LaMP_3 (default: every "
                    "quality_*.json in --results but *_val, *_val_latest and *_compare_cli)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the quality_<label>.json files are")
    ap.add_argument("--spreads", default=None, help="comma-separated seed_spread_<label>.json labels for the table "
                    "over seeds (default: every one in --results; '' for none)")
    ap.add_argument("--rerun", action="append", default=[], metavar="LABEL:COLUMN=NAME",
                    help="replace one scoreboard cell with a peer's rerun in results/NAME.json (a "
                         "bench/pair_results.py output or a quality table); repeatable")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else \
        default_labels(args.results)
    try:
        spreads = None if args.spreads is None else [x.strip() for x in args.spreads.split(",") if x.strip()]
        reruns = [parse_rerun(x) for x in args.rerun]
        result = summarize(labels, args.results, spreads, reruns)
    except SummaryError as err:
        raise SystemExit(f"error: {err}") from None
    result.write_and_print(args.out)
    save_plot(args.out / BOARD_PNG, plot_board(result.data["scoreboard"]))
    print(f"wrote {args.out / BOARD_PNG}")


if __name__ == "__main__":
    main()
