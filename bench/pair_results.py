"""Paired 95% CI between two kept results of bench/quality.py on the same users, e.g. two points of a
validation sweep (each dir pairs its methods only with each other).

    .venv/bin/python bench/pair_results.py --task LaMP_3 --source magazine --users 100 --val-latest \
        <runs>/val-latest-A/result_tapper.json <runs>/val-latest-B/result_tapper.json

A or B may be `floor:<words>` instead of a file: the floor of tapper.baselines.floors whose name contains the
words, made on the same users (a table written before floors kept their answers gets its floor pairs this way):

    .venv/bin/python bench/pair_results.py --task LaMP_2N --users 96 <runs>/result_tapper.json "floor:most frequent"

A or B may also be `<answers file>#<method>`: that method's answers in a table's answers/<name>.json, which
bench/quality.py writes beside every table (a fresh machine has no runs dir, but the results keep the answers):

    .venv/bin/python bench/pair_results.py --task LaMP_4 --users 114 \
        "results/answers/quality_LaMP_4.json#TAP-PER" "results/answers/quality_LaMP_4.json#PPlug"

Several B operands pair A with each of them in turn. `--out NAME` also writes results/NAME.{json,md}: one row per
pair, with the command that made it (results kept by different code versions, e.g. a peer rerun after a fix
against a TAP-PER kept before it, are paired this way when a table cannot hold both):

    .venv/bin/python bench/pair_results.py --task LaMP_2N --users 96 --out pag_whole_LaMP_2N \
        <runs>/result_tapper.json <new runs>/result_pag.json <runs>/result_pag.json

Prints A minus B on the task's primary metric, the bootstrap CI (1,000 paired resamples, --seed), how many
answers differ, on how many questions each scores better than the other, and the score of the better of the two
per question (an oracle choosing between them: how much two methods that tie could still add to each other).
The users are rebuilt with bench/quality.py's own choice (same --task/--source/--users/
--stage1-users/--min-profile/--seed, and --val-users or --val-latest as the runs had).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import RESULTS, Result, Table
from quality import OTHER_SOURCES, SOURCES, choose_users

from tapper.baselines.floors import floors
from tapper.compare import hold_out_latest
from tapper.compare.report import mean_difference_ci, per_question_scores
from tapper.data.records import LampSplit
from tapper.experiment import primary_metric


def users(args: argparse.Namespace) -> tuple[LampSplit, LampSplit]:
    """(the scored users, the stage-1 users) as the runs had them."""
    target, others = choose_users(args.task, args.users, args.stage1_users, args.seed, args.min_profile,
                                  args.source, args.val_users)[:2]
    return (hold_out_latest(target) if args.val_latest else target), others


def choose_floor(made: dict[str, dict[str, str]], words: str, task: str) -> tuple[str, dict[str, str]]:
    """(name, answers) of the one floor in `made` (tapper.baselines.floors' output) whose name holds `words`."""
    wanted = words.strip().lower()
    chosen = [name for name in made if wanted in name.lower()]
    if len(chosen) != 1:
        raise SystemExit(f"{'floor:' + words!r}: {'no' if not chosen else 'more than one'} floor of {task} "
                         f"matches; its floors: {sorted(made)}")
    return chosen[0], made[chosen[0]]


def load_answers(operand: str, target: LampSplit, others: LampSplit) -> tuple[str, dict[str, str]]:
    """(name, {question id: answer}) of a kept result file, of a method in a table's answers file
    (`<file>#<method>`), or of the floor named by `floor:<words>`."""
    if operand.startswith("floor:"):
        return choose_floor(floors(target.task, target, others), operand.removeprefix("floor:"), target.task)
    if "#" in operand:
        file, method = operand.split("#", 1)
        return f"{method} ({file})", read_answers(Path(file), method)
    path = Path(operand)
    kept = read_kept(path)
    return f"{kept['name']} ({path})", kept["predictions"]


def read_kept(path: Path) -> dict:
    """A kept result of bench/quality.py (result_<method>.json): at least its name and its predictions."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(kept["name"], str) or not isinstance(kept["predictions"], dict):
            raise TypeError("'name' or 'predictions' of the wrong type")
        return kept
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not a kept result of bench/quality.py ({err})") from None


def read_answers_file(path: Path) -> dict[str, dict[str, str]]:
    """{method name: {question id: answer}} of an answers file of bench/quality.py (LaMP's output format per
    method)."""
    try:
        methods = json.loads(path.read_text(encoding="utf-8"))["methods"]
        if not isinstance(methods, dict):
            raise TypeError("'methods' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not an answers file of bench/quality.py ({err})") from None
    answers = {}
    for method, rows in methods.items():
        try:
            answers[method] = {g["id"]: g["output"] for g in rows["golds"]}
        except (KeyError, TypeError) as err:
            raise SystemExit(f"{path}: {method!r} is not in LaMP's output format ({err!r})") from None
    return answers


def read_answers(path: Path, method: str) -> dict[str, str]:
    """{question id: answer} of one method in an answers file of bench/quality.py."""
    methods = read_answers_file(path)
    if method not in methods:
        raise SystemExit(f"{path}: no method {method!r}; it has {sorted(methods)}")
    return methods[method]


def pair(task: str, golds: dict[str, str], a: dict[str, str], b: dict[str, str], seed: int) -> dict:
    missing = sorted((set(golds) - set(a)) | (set(golds) - set(b)))
    if missing:
        raise SystemExit(f"{len(missing)} scored users have no answer in one of the results (e.g. {missing[0]!r}): "
                         "were they made on these users?")
    metric, higher = primary_metric(task)
    # each question scored once; the primary metric is their mean, and the paired CI resamples their differences
    per_a, per_b = (np.array(per_question_scores(task, metric, golds, p)) for p in (a, b))
    diffs = per_a - per_b
    gain = diffs if higher else -diffs  # > 0 where a scores better
    low, high = mean_difference_ci(diffs, seed)[1:]
    best = np.maximum(per_a, per_b) if higher else np.minimum(per_a, per_b)
    return {"metric": metric, "score_a": float(per_a.mean()), "score_b": float(per_b.mean()),
            "difference": float(diffs.mean()), "ci95": [low, high], "answers_differ": sum(a[q] != b[q] for q in golds),
            "a_better": int((gain > 0).sum()), "b_better": int((gain < 0).sum()), "better_of_both": float(best.mean()),
            "users": len(golds)}


def pairs_table(task: str, pairs: list[dict]) -> Table:
    """One row per pair: A, B, both scores, A minus B with its CI, and where the answers differ."""
    rows = [[p["a"], p["b"], p["score_a"], p["score_b"], p["difference"], f"{p['ci95'][0]:+.3f} - {p['ci95'][1]:+.3f}",
             p["answers_differ"], p["a_better"], p["b_better"]] for p in pairs]
    metric = pairs[0]["metric"]
    return Table(f"{task}, {pairs[0]['users']} users: A minus B on {metric}, paired 95% CI",
                 ["A", "B", f"A {metric}", f"B {metric}", "A - B", "95% CI", "answers differ", "A better",
                  "B better"], rows, align_left=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="a kept result_<method>.json, or floor:<words of a floor's name>")
    ap.add_argument("b", nargs="+", help="the same; A is paired with each")
    ap.add_argument("--out", default=None, metavar="NAME", help="also write results/NAME.{json,md}")
    ap.add_argument("--task", required=True, choices=["LaMP_7", *SOURCES])
    ap.add_argument("--source", choices=list(OTHER_SOURCES), default=None)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stage1-users", type=int, default=300)
    ap.add_argument("--min-profile", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-users", type=int, default=0)
    ap.add_argument("--val-latest", action="store_true")
    args = ap.parse_args()
    target, others = users(args)
    golds = {q.id: target.gold(q.id) for q in target.questions}
    name_a, a = load_answers(args.a, target, others)
    pairs = []
    for operand in args.b:
        name_b, b = load_answers(operand, target, others)
        pairs.append({"a": name_a, "b": name_b, **pair(target.task, golds, a, b, args.seed)})
        print(json.dumps(pairs[-1]))
    if args.out:
        Result(args.out, f"{target.task}: {name_a} paired with {len(pairs)} other result(s)",
               {"task": target.task, "pairs": pairs}, [pairs_table(target.task, pairs)]).write_and_print(RESULTS)


if __name__ == "__main__":
    main()
