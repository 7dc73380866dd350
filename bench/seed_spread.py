"""How much of a gap between two methods is one training run's spread: the same users and settings trained again
with other seeds (`bench/quality.py --set seed=N`, each seed with its own --runs), read from the kept results.

    .venv/bin/python bench/seed_spread.py --task LaMP_3 --source magazine --users 100 \
        --table 0=results/quality_LaMP_3_magazine.json --runs 1=/root/tapper-runs/LaMP_3_magazine-seed1 \
        --runs 2=/root/tapper-runs/LaMP_3_magazine-seed2 --label LaMP_3_magazine

`--set seed` drives every stage (stage 1's data order and LoRA init, stage 2's, the user rows' init), so a
seed's run is a whole retraining, not a resample of one. For each seed this reports each method's score and
the paired difference of `--a` minus each `--b` (default TAP-PER minus the same-budget control; repeat --b for
several opponents, e.g. `--b nonpersonal --b oppu --b pplug`, or a floor as `--b "floor:most frequent"`,
whose answers are made once on these users and are the same in every seed) with its bootstrap CI; across seeds, each
method's spread and, for each pair of seeds, how far one method moved between them (paired CI, answers
changed); and, over the seeds with answers, a minus each b averaged per question over the seeds, with one
bootstrap interval that resamples users and one that resamples users and seeds (tapper.compare.report.
mean_difference_ci). Writes results/seed_spread_<label>.{json,md,png}.

A seed whose runs dir is gone but whose answers files were kept (results/answers/<table>.json, written beside
every table) is given by them: `--answers 1=results/answers/quality_LaMP_2_s2ep4-s1-tapper.json --answers
1=results/answers/quality_LaMP_2_s2ep4-s1-peers.json`, so a pooled interval can be rebuilt from a clean checkout.

The seeds must differ in nothing else. Kept results record the settings they read (since 8d6835c), and a seed's
own table (`--table` beside its `--runs`: the table that run wrote to its --out) records its configs; a
difference apart from the seed stops the report, naming the setting. Each method is checked on the settings it
reads (tapper.compare.runner.method_settings): RAG+targets run beside TAP-PER at 2 stage-2 epochs pools with
TAP-PER at 4, as no RAG reads stage 2. What neither records is listed as not checked.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from common import RESULTS, Result, Table
from pair_results import load_answers, pair, read_answers_file, read_kept, users
from quality import OTHER_SOURCES, SOURCES
from quality_summary import (
    OPPONENTS,
    SPREAD_NAMES,
    TAPPER,
    SummaryError,
    is_method,
    load_task,
    paired_from_notes,
    verdict,
)

from tapper.compare.report import ANSWERS_DIR, mean_difference_ci, run_differences
from tapper.compare.runner import method_settings
from tapper.data.records import LampSplit
from tapper.experiment import primary_metric
from tapper.metrics import evaluate


def is_floor(method: str) -> bool:
    return method.startswith("floor:")


def result_file(runs: Path, method: str) -> Path:
    path = runs / f"result_{method}.json"
    if not path.exists():
        raise SystemExit(f"{path}: no kept result of {method!r} in this seed's runs dir")
    return path


# How a method's rows are named in an answers file, by its --methods key: TAP-PER's own name exactly (its int8
# row is "TAP-PER (int8 user table)"), every other method its name or that with a parenthesized detail
EXACT_NAMES = {"tapper": TAPPER, "tapper-int8": f"{TAPPER} (int8 user table)"}
NAME_PREFIXES = {key: dict(OPPONENTS)[column] for key, column in SPREAD_NAMES.items()}


def names_method(row: str, method: str) -> bool:
    """Whether a row so named is method's (a --methods key with a known row name)."""
    return row == EXACT_NAMES[method] if method in EXACT_NAMES else is_method(row, NAME_PREFIXES[method])


def answers_of(files: list[tuple[Path, dict[str, dict[str, str]]]], method: str) -> dict[str, Any]:
    """{"name", "predictions"} of one method (a --methods key) in one seed's answers files, each read once as
    (path, read_answers_file(path)): exactly one row of all those files."""
    if method not in EXACT_NAMES and method not in NAME_PREFIXES:
        raise SystemExit(f"--answers: method {method!r} has no known row name; known: "
                         f"{sorted([*EXACT_NAMES, *NAME_PREFIXES])}")
    found = [(f, name, answers) for f, rows in files for name, answers in rows.items() if names_method(name, method)]
    if len(found) != 1:
        where = ", ".join(f"{name!r} in {f}" for f, name, _ in found) or "none"
        raise SystemExit(f"--answers: method {method!r} needs exactly one row among "
                         f"{', '.join(str(f) for f, _ in files)}; found {where}")
    where, name, answers = found[0]
    return {"name": name, "predictions": answers, "file": where}


def answers_table(path: Path) -> Path | None:
    """The table an answers file was written beside (results/answers/X.json -> results/X.json), if it is there."""
    table = path.parent.parent / path.name
    return table if path.parent.name == ANSWERS_DIR and table.exists() else None


def read_methods(seeds: dict[str, Path], methods: list[str], target: LampSplit, others: LampSplit,
                 answer_files: dict[str, list[Path]] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """kept[seed][method]: each seed's kept result of each method, read once, from its runs dir (`seeds`) or from
    its answers files (`answer_files`). A floor ("floor:<words>") trains nothing: it is made once on these users
    and stands in every seed with the same answers."""
    floors = {}
    for m in filter(is_floor, methods):
        name, answers = load_answers(m, target, others)
        floors[m] = {"name": name, "predictions": answers}
    kept = {s: {m: floors[m] if is_floor(m) else read_kept(result_file(d, m)) for m in methods}
            for s, d in seeds.items()}
    for s, files in (answer_files or {}).items():
        rows = [(f, read_answers_file(f)) for f in files]  # (results/answers/<table>.json, written beside each table)
        kept[s] = {m: floors[m] if is_floor(m) else answers_of(rows, m) for m in methods}
    return kept


def table_settings(path: Path, runs: Path | None = None) -> dict[str, Any]:
    """What a kept table says its run was made with: its model and training configs. `runs`: the runs dir the
    table is given for, which must be the one it was made from."""
    data = json.loads(path.read_text(encoding="utf-8"))
    made_from = data.get("runs")
    if runs is not None and made_from and Path(made_from).resolve() != runs.resolve():
        raise SystemExit(f"{path}: made from the runs dir {made_from}, not {runs}")
    return {**data.get("model_config", {}), **data.get("train_config", {})}


def settings_read(method: str, settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of a table's (or a kept result's) settings, those `method` reads (tapper.compare.runner.method_settings):
    a peer trained before stage 2 is the same run whatever TAP-PER's stage 2 was. Applied to kept results too,
    so one recorded before the package knew better is read as it is known now."""
    return None if settings is None else method_settings(method, settings)


def check_same_settings(settings: dict[str, dict[str, Any] | None]) -> list[str]:
    """settings[where] = what one seed's result (or table) was made with, or None where not recorded. Every
    recorded pair must agree on the keys both hold, `seed` apart: otherwise the spread is a settings change,
    not a seed's, and this stops naming the key. Returns the places that could not be checked."""
    known = {w: {k: v for k, v in s.items() if k != "seed"} for w, s in settings.items() if s is not None}
    for (w1, s1), (w2, s2) in itertools.combinations(known.items(), 2):
        differ = sorted(k for k in s1.keys() & s2.keys() if s1[k] != s2[k])
        if differ:
            shown = "; ".join(f"{k}={s1[k]!r} in {w1}, {s2[k]!r} in {w2}" for k in differ)
            raise SystemExit(f"not the same settings apart from the seed: {shown}. Their spread would mix a "
                             "settings change with the seed's; rerun with the same --set")
    return sorted(w for w, s in settings.items() if s is None)


def table_seed(path: Path, names: dict[str, str], a: str, bs: list[str], metric: str,
               golds: dict[str, str]) -> dict[str, Any]:
    """One seed as a kept table recorded it: names maps a method key to the name its rows carry. The few
    answers a table keeps per method must be to questions of these users."""
    try:
        data = load_task(path)
    except SummaryError as err:
        raise SystemExit(str(err)) from None
    rows = {r["method"]: r for r in data["results"]}
    for key, name in names.items():
        if name not in rows:
            raise SystemExit(f"{path}: no row named {name!r} (method {key!r}); its rows: {sorted(rows)}")
        strangers = sorted(set(rows[name].get("examples", {})) - set(golds))
        if strangers:
            raise SystemExit(f"{path}: row {name!r} answers questions these users do not have (e.g. "
                             f"{strangers[0]!r}): was the table made on other users?")
    scores = {m: rows[name]["metrics"][metric] for m, name in names.items()}
    gaps = {}
    for b in bs:
        paired = rows[names[a]].get("paired", {}).get(names[b])
        flipped = rows[names[b]].get("paired", {}).get(names[a])  # each row keeps itself minus TAP-PER
        if paired is None and flipped is not None:
            low, high = flipped["ci95"]
            paired = {**flipped, "difference": 0.0 - flipped["difference"], "ci95": [0.0 - high, 0.0 - low]}
        if paired is None and names[a] == TAPPER:  # a table from before rows kept their pairs: its report's notes
            ci = paired_from_notes(path.with_suffix(".md"), data).get(names[b])
            paired = ci and {"metric": metric, "difference": scores[a] - scores[b], "ci95": ci}
        if not paired or paired.get("metric") != metric:
            raise SystemExit(f"{path}: row {names[a]!r} has no {metric} pair with {names[b]!r} (in the JSON, or "
                             f"in {path.with_suffix('.md').name}'s notes)")
        gaps[b] = {"difference": paired["difference"], "ci95": paired["ci95"], "answers_differ": None}
    return {"scores": scores, "gaps": gaps, "from_table": str(path)}


def spread(task: str, golds: dict[str, str], answers: dict[str, dict[str, dict[str, str]]], a: str,
           bs: list[str], boot_seed: int = 0, tabled: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """answers[seed][method] = {question id: answer}; tabled[seed] = table_seed(...) for seeds known only by
    their table. Per seed: every method scored, and a minus each b paired; per method: its spread over seeds,
    and each pair of answer seeds paired; per b: the gap's spread over seeds."""
    metric, higher = primary_metric(task)
    tabled = tabled or {}
    methods = list(next(iter(answers.values())))

    def judged(gap: dict[str, Any]) -> dict[str, Any]:
        return {**gap, "verdict": verdict(gap["difference"], gap["ci95"], higher)}

    per_seed = {s: {**d, "gaps": {b: judged(g) for b, g in d["gaps"].items()}} for s, d in tabled.items()}
    for s in answers:
        per_seed[s] = {"scores": {m: evaluate(task, golds, {q: answers[s][m][q] for q in golds})[metric]
                                  for m in methods},
                       "gaps": {b: judged(pair(task, golds, answers[s][a], answers[s][b], boot_seed)) for b in bs}}
    per_method = {}
    per_seed = dict(sorted(per_seed.items()))
    for m in methods:
        scores = [d["scores"][m] for d in per_seed.values()]
        between = {f"{s} vs {t}": pair(task, golds, answers[s][m], answers[t][m], boot_seed)
                   for s, t in itertools.combinations(answers, 2)}
        per_method[m] = {"mean": statistics.fmean(scores), "min": min(scores), "max": max(scores),
                         "sd": statistics.stdev(scores), "between_seeds": between}
    gaps = {}
    for b in bs:
        diffs = [d["gaps"][b]["difference"] for d in per_seed.values()]
        verdicts = [d["gaps"][b]["verdict"] for d in per_seed.values()]
        gaps[b] = {"mean": statistics.fmean(diffs), "min": min(diffs), "max": max(diffs),
                   "sd": statistics.stdev(diffs),
                   "same_sign": all(g > 0 for g in diffs) or all(g < 0 for g in diffs),
                   "verdicts": {v: verdicts.count(v) for v in dict.fromkeys(verdicts)},
                   "pooled": pooled(task, golds, answers, a, b, boot_seed, higher)}
    return {"metric": metric, "higher_is_better": higher, "a": a, "bs": bs, "per_seed": per_seed,
            "per_method": per_method, "gaps": gaps}


def pooled(task: str, golds: dict[str, str], answers: dict[str, dict[str, dict[str, str]]], a: str, b: str,
           boot_seed: int, higher: bool) -> dict[str, Any] | None:
    """a minus b averaged over the seeds with answers: each question's difference is its mean over the seeds,
    and the bootstrap resamples questions (seeds fixed: these training runs), then also seeds (two levels:
    training runs as a random draw too). None with fewer than two such seeds."""
    if len(answers) < 2:
        return None
    metric = primary_metric(task)[0]
    diffs = run_differences(task, metric, golds, [(answers[s][a], answers[s][b]) for s in answers])
    out: dict[str, Any] = {"seeds": list(answers)}
    for key, resample in (("users", False), ("users_and_seeds", True)):  # one scoring, two bootstraps
        mean, low, high = mean_difference_ci(diffs, boot_seed, resample_runs=resample)
        out["difference"] = mean
        out[key] = {"ci95": [low, high], "verdict": verdict(mean, [low, high], higher)}
    return out


def gap_cell(g: dict[str, Any]) -> str:
    differ = "table only" if g["answers_differ"] is None else f"{g['answers_differ']} answers differ"
    return "{:+.3f} [{:+.3f}, {:+.3f}] {} ({})".format(g["difference"], *g["ci95"], g["verdict"], differ)


def verdict_counts(verdicts: dict[str, int]) -> str:
    return "; ".join(f"{n}x {v}" for v, n in verdicts.items())  # a verdict may hold a comma


def tables(out: dict[str, Any], methods: list[str]) -> list[Table]:
    metric, a, bs = out["metric"], out["a"], out["bs"]
    rows = [[s, *(d["scores"][m] for m in methods), *(gap_cell(d["gaps"][b]) for b in bs)]
            for s, d in out["per_seed"].items()]
    rows.append(["mean (sd)", *(f"{out['per_method'][m]['mean']:.4f} ({out['per_method'][m]['sd']:.4f})"
                                for m in methods),
                 *(f"{out['gaps'][b]['mean']:+.4f} ({out['gaps'][b]['sd']:.4f}); "
                   + verdict_counts(out["gaps"][b]["verdicts"]) for b in bs)])
    per_seed = Table(f"{metric} per training seed, and {a} minus each opponent (paired 95% CI, verdict)",
                     ["seed", *methods, *(f"{a} - {b}" for b in bs)], rows)
    rows = [[m, pair_name, d["score_a"], d["score_b"], d["difference"], "[{:+.3f}, {:+.3f}]".format(*d["ci95"]),
             d["answers_differ"]]
            for m in methods if not is_floor(m)  # a floor answers alike in every seed
            for pair_name, d in out["per_method"][m]["between_seeds"].items()]
    between = Table(f"One method against itself, trained with two seeds ({metric}, paired 95% CI)",
                    ["method", "seeds", "score, first", "score, second", "difference", "paired 95% CI",
                     "answers differ"], rows)
    pooled_rows = [[b, ", ".join(g["pooled"]["seeds"]), f"{g['pooled']['difference']:+.4f}",
                    *("[{:+.3f}, {:+.3f}] {}".format(*g["pooled"][k]["ci95"], g["pooled"][k]["verdict"])
                      for k in ("users", "users_and_seeds"))]
                   for b, g in out["gaps"].items() if g["pooled"]]
    if not pooled_rows:
        return [per_seed, between]
    pooled_table = Table(f"{a} minus each opponent averaged over the seeds with answers ({metric}): 95% CI with "
                         "users resampled, and with users and seeds resampled",
                         ["opponent", "seeds", "mean difference", "CI, users resampled",
                          "CI, users and seeds resampled"], pooled_rows)
    return [per_seed, pooled_table, between]


# one colour per method, in both panels: an opponent's gaps take its scores' colour
COLORS = ("#2a7", "#e80", "#68c", "#c4a", "#999", "#a52", "#4bb", "#333")


def plot_seeds(out: dict[str, Any], label: str, methods: list[str]):
    """Left: each method's score per seed. Right: a minus each b per seed with its paired 95% CI, zero dashed."""
    def draw(fig) -> None:
        fig.set_size_inches(10, 0.5 * len(out["per_seed"]) + 2.6)
        scores, gaps = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        seeds = list(out["per_seed"])
        for i, m in enumerate(methods):  # offset per method, so that equal scores stay visible
            scores.plot([out["per_seed"][s]["scores"][m] for s in seeds],
                        [y + 0.6 * (i - (len(methods) - 1) / 2) / len(methods) for y in range(len(seeds))], "o",
                        color=COLORS[i % len(COLORS)], label=m)
        bs = out["bs"]
        for j, b in enumerate(bs):
            for y, s in enumerate(seeds):
                g = out["per_seed"][s]["gaps"][b]
                low, high = g["ci95"]
                gaps.errorbar(g["difference"], y + 0.6 * (j - (len(bs) - 1) / 2) / len(bs),
                              xerr=[[g["difference"] - low], [high - g["difference"]]], fmt="o",
                              color=COLORS[methods.index(b) % len(COLORS)], capsize=3,
                              label=f"minus {b}" if y == 0 else None)
        gaps.axvline(0, color="#999", ls="--", lw=1)
        better = "higher" if out["higher_is_better"] else "lower"
        for ax, title in ((scores, f"{out['metric']} per seed ({better} is better)"),
                          (gaps, f"{out['a']} minus each, paired 95% CI")):
            ax.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds], fontsize=8)
            ax.set_title(f"{label}: {title}", fontsize=9)
        for ax in (scores, gaps):  # below the axes: with several opponents a legend inside covers points
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4, frameon=False)
    return draw


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", default=[], metavar="SEED=DIR",
                    help="one seed's bench/quality.py work dir (--runs); repeatable")
    ap.add_argument("--answers", action="append", default=[], metavar="SEED=FILE",
                    help="one seed's answers, from the answers file bench/quality.py wrote beside its table "
                         "(results/answers/<table>.json), for a seed whose runs dir is gone; repeat the seed for "
                         "each of its runs' files (each method in exactly one); the table beside it, where "
                         "there, has its settings checked")
    ap.add_argument("--table", action="append", default=[], metavar="SEED=FILE",
                    help="a seed known only by its kept table (results/quality_<label>.json); with --runs for the "
                         "same seed, that run's own table (its --out, one per --out it wrote): its settings are "
                         "checked against the others'; repeatable")
    ap.add_argument("--methods", default="tapper,nonpersonal", help="kept results to read, as result_<method>.json")
    ap.add_argument("--a", default="tapper")
    ap.add_argument("--b", action="append", default=[],
                    help="an opponent of --a (default nonpersonal, the same-budget control), or \"floor:<words>\" "
                         "naming one of the task's floors; repeatable")
    ap.add_argument("--label", required=True, help="names the output: results/seed_spread_<label>.*")
    ap.add_argument("--task", required=True, choices=["LaMP_7", *SOURCES])
    ap.add_argument("--source", choices=list(OTHER_SOURCES), default=None)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stage1-users", type=int, default=300)
    ap.add_argument("--min-profile", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the user choice's seed, as bench/quality.py had it")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.val_users, args.val_latest = 0, False
    seeds: dict[str, Path] = {}
    answer_files: dict[str, list[Path]] = {}  # a seed given by answers files may bring several (one per run)
    tables_of: dict[str, list[Path]] = {}  # a seed with --runs may bring several (one per --out it wrote)
    for flag, given in (("--runs", args.runs), ("--answers", args.answers), ("--table", args.table)):
        for item in given:
            seed, sep, where = item.partition("=")
            if not sep or not seed or not where:
                ap.error(f"{flag} {item!r}: expected SEED={'DIR' if flag == '--runs' else 'FILE'}")
            if flag == "--runs":
                if seed in seeds:
                    ap.error(f"--runs: seed {seed!r} given twice")
                seeds[seed] = Path(where)
            elif flag == "--answers":
                if seed in seeds:
                    ap.error(f"--answers: seed {seed!r} has a runs dir already (--runs); give one or the other")
                answer_files.setdefault(seed, []).append(Path(where))
            elif seed in tables_of and seed not in seeds and seed not in answer_files:
                ap.error(f"--table: seed {seed!r} given twice (without --runs, a seed is one table)")
            else:
                tables_of.setdefault(seed, []).append(Path(where))
    if not seeds and not answer_files:
        ap.error("--runs or --answers: give at least one seed's answers (its runs dir or its answers files)")
    if len(seeds.keys() | answer_files.keys() | tables_of.keys()) < 2:
        ap.error("give at least two seeds (--runs or --answers, or --table for a seed whose answers are gone)")
    bs = args.b or ["nonpersonal"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in (args.a, *bs):
        if m not in methods:
            methods.append(m)
    target, others = users(args)
    golds = {q.id: target.gold(q.id) for q in target.questions}
    kept = read_methods(seeds, methods, target, others, answer_files)
    answers = {s: {m: kept[s][m]["predictions"] for m in methods} for s in kept}
    # Each method's settings, as it reads them: from its kept result, from the table its answers file was
    # written beside, or from a seed's own table (for the methods that table has rows of). A result from before
    # results recorded their settings is covered by its seed's own table, where given.
    checked: dict[str, dict[str, Any] | None] = {}
    for s in kept:
        for m in filter(lambda m: not is_floor(m), methods):  # a floor trains nothing
            if s in seeds:
                where, read = f"{result_file(seeds[s], m)}", kept[s][m].get("settings_read")
            else:
                table = answers_table(kept[s][m]["file"])
                where, read = (f"{table} ({m})", table_settings(table)) if table else (f"{kept[s][m]['file']}", None)
            if read is not None or s not in tables_of:
                checked[where] = settings_read(m, read)
    for s, fs in tables_of.items():
        for f in fs:
            settings = table_settings(f, seeds.get(s))
            rows = [r["method"] for r in json.loads(f.read_text(encoding="utf-8")).get("results", [])]
            for m in methods:  # a method without a known row name is checked on every table of its seed
                named = m in EXACT_NAMES or m in NAME_PREFIXES
                if not is_floor(m) and (not named or any(names_method(r, m) for r in rows)):
                    checked[f"{f} ({m})"] = settings_read(m, settings)
    unchecked = check_same_settings(checked)
    only_tables = {s: fs[0] for s, fs in tables_of.items() if s not in seeds and s not in answer_files}
    names = {m: next(iter(kept.values()))[m]["name"] for m in methods}
    metric = primary_metric(target.task)[0]
    tabled = {s: table_seed(f, names, args.a, bs, metric, golds) for s, f in only_tables.items()}
    out = spread(target.task, golds, answers, args.a, bs, args.seed, tabled)
    notes = [f"{args.a} minus {b} over {len(out['per_seed'])} seeds: mean {g['mean']:+.4f}, range "
             f"[{g['min']:+.4f}, {g['max']:+.4f}], sd {g['sd']:.4f}; "
             f"{'the same sign in every seed' if g['same_sign'] else 'the sign changes between seeds'}; "
             + f"verdicts {verdict_counts(g['verdicts'])}."
             for b, g in out["gaps"].items()]
    notes += [f"{args.a} minus {b} averaged over seeds {', '.join(g['pooled']['seeds'])} (those with answers): "
              f"{g['pooled']['difference']:+.4f}, 95% CI users resampled "
              "[{:+.4f}, {:+.4f}] ({}), users and seeds resampled [{:+.4f}, {:+.4f}] ({}).".format(
                  *g["pooled"]["users"]["ci95"], g["pooled"]["users"]["verdict"],
                  *g["pooled"]["users_and_seeds"]["ci95"], g["pooled"]["users_and_seeds"]["verdict"])
              for b, g in out["gaps"].items() if g["pooled"]]
    notes += [f"{'Higher' if out['higher_is_better'] else 'Lower'} {out['metric']} is better. Runs: "
              + ", ".join([*(f"seed {s}: {d}" for s, d in seeds.items()),
                           *(f"seed {s}: answers {', '.join(map(str, fs))}" for s, fs in answer_files.items()),
                           *(f"seed {s}: table {f} only (no between-seed pairs)" for s, f in only_tables.items())])
              + ".",
              "Settings, apart from the seed: the same in every seed where recorded"
              + (f"; not recorded (kept before results recorded them), so not checked: {', '.join(unchecked)}."
                 if unchecked else ".")]
    Result(f"seed_spread_{args.label}", f"Seed spread on {args.label}: {args.a} against {', '.join(bs)}",
           {"task": target.task, "users": len(golds), "runs": {s: str(d) for s, d in seeds.items()},
            "answers": {s: [str(f) for f in fs] for s, fs in answer_files.items()},
            "tables": {s: [str(f) for f in fs] for s, fs in tables_of.items()}, **out},
           tables(out, methods), notes).write_and_print(args.out, plot=plot_seeds(out, args.label, methods))


if __name__ == "__main__":
    main()
