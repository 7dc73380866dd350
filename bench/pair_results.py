"""Paired 95% CI between two kept results of bench/quality.py on the same users, e.g. two points of a
validation sweep (each dir pairs its methods only with each other).

    .venv/bin/python bench/pair_results.py --task LaMP_3 --source magazine --users 100 --val-latest \
        <runs>/val-latest-A/result_tapper.json <runs>/val-latest-B/result_tapper.json

Prints A minus B on the task's primary metric, the bootstrap CI (1,000 paired resamples, --seed) and how many
answers differ. The users are rebuilt with bench/quality.py's own choice (same --task/--source/--users/
--stage1-users/--min-profile/--seed, and --val-users or --val-latest as the runs had).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quality import OTHER_SOURCES, SOURCES, choose_users

from tapper.compare import hold_out_latest
from tapper.compare.report import paired_difference_ci
from tapper.data.records import LampSplit
from tapper.experiment import primary_metric
from tapper.metrics import evaluate


def users(args: argparse.Namespace) -> LampSplit:
    target = choose_users(args.task, args.users, args.stage1_users, args.seed, args.min_profile, args.source,
                          args.val_users)[0]
    return hold_out_latest(target) if args.val_latest else target


def pair(task: str, golds: dict[str, str], a: dict[str, str], b: dict[str, str], seed: int) -> dict:
    missing = sorted((set(golds) - set(a)) | (set(golds) - set(b)))
    if missing:
        raise SystemExit(f"{len(missing)} scored users have no answer in one of the results (e.g. {missing[0]!r}): "
                         "were they made on these users?")
    metric = primary_metric(task)[0]
    score = {name: evaluate(task, golds, {q: p[q] for q in golds})[metric] for name, p in (("a", a), ("b", b))}
    low, high = paired_difference_ci(task, metric, golds, a, b, seed)
    return {"metric": metric, "score_a": score["a"], "score_b": score["b"], "difference": score["a"] - score["b"],
            "ci95": [low, high], "answers_differ": sum(a[q] != b[q] for q in golds), "users": len(golds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--task", required=True, choices=["LaMP_7", *SOURCES])
    ap.add_argument("--source", choices=list(OTHER_SOURCES), default=None)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stage1-users", type=int, default=300)
    ap.add_argument("--min-profile", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-users", type=int, default=0)
    ap.add_argument("--val-latest", action="store_true")
    args = ap.parse_args()
    target = users(args)
    golds = {q.id: target.gold(q.id) for q in target.questions}
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (args.a, args.b))
    out = pair(target.task, golds, a["predictions"], b["predictions"], args.seed)
    print(json.dumps({"a": f"{a['name']} ({args.a})", "b": f"{b['name']} ({args.b})", **out}))


if __name__ == "__main__":
    main()
