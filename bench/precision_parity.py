"""Quality parity of bf16 against fp32: the same run twice, once per dtype, compared question by question.

The demo (built-in sample):

    .venv/bin/tapper demo --dtype fp32 --out runs/parity_fp32 --threads 1
    .venv/bin/tapper demo --dtype bf16 --out runs/parity_bf16 --threads 1
    .venv/bin/python bench/precision_parity.py --fp32 runs/parity_fp32 --bf16 runs/parity_bf16

A real task: two bench/quality.py work dirs whose only difference is `--set dtype=...` (each trains its own
stage 1, so the whole pipeline runs in its precision), named by the same user choice as quality.py:

    .venv/bin/python bench/quality.py --task LaMP_3 --users 69 --methods task-lora,tapper --runs R/bf16
    .venv/bin/python bench/quality.py --task LaMP_3 --users 69 --methods task-lora,tapper --runs R/fp32 \\
        --set dtype=fp32
    .venv/bin/python bench/precision_parity.py --task LaMP_3 --users 69 --fp32 R/fp32 --bf16 R/bf16

Both runs share the code, the seed, the data and the batch order; only the precision differs. For every
method that both runs scored, the table gives the task's primary metric under each dtype and the paired 95%
bootstrap interval of bf16 - fp32 over the same questions. Writes results/precision_parity.{json,md}, or
results/precision_parity_<task>.{json,md} for a task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, Result, Table

from tapper.compare.report import paired_difference_ci
from tapper.experiment import primary_metric


def load_demo(run: Path) -> dict:
    path = run / "demo_results.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if "golds" not in data:
        raise SystemExit(f"{path} has no per-question predictions: rerun the demo with this version of tapper")
    return data


def load_quality(run: Path, golds: dict[str, str]) -> dict:
    """A quality.py work dir in the demo's shape: every kept result_<method>.json that answers `golds`."""
    methods = []
    for path in sorted(run.glob("result_*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        if set(r.get("predictions") or {}) >= set(golds):
            methods.append(r)
    if not methods:
        raise SystemExit(f"{run}: no result_*.json answers these {len(golds)} target users (other --users/--seed?)")
    return {"golds": golds, "methods": methods}


def task_golds(args: argparse.Namespace) -> dict[str, str]:
    from quality import choose_users

    target = choose_users(args.task, args.users, args.stage1_users, args.seed, args.min_profile)[0]
    return dict(target.golds or {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, required=True, help="the fp32 run's directory")
    ap.add_argument("--bf16", type=Path, required=True, help="the bf16 run's directory")
    ap.add_argument("--task", default=None, help="the two directories are bench/quality.py work dirs of this task")
    ap.add_argument("--users", type=int, default=100, help="with --task: quality.py's --users")
    ap.add_argument("--stage1-users", type=int, default=300, help="with --task: quality.py's --stage1-users")
    ap.add_argument("--min-profile", type=int, default=3, help="with --task: quality.py's --min-profile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.task:
        golds = task_golds(args)
        fp32, bf16 = load_quality(args.fp32, golds), load_quality(args.bf16, golds)
        task, where = args.task, f"{args.task}, {len(golds)} target users"
    else:
        fp32, bf16 = load_demo(args.fp32), load_demo(args.bf16)
        if fp32["golds"] != bf16["golds"]:
            raise SystemExit("the two demo runs scored different questions")
        task, where = "LaMP_3", f"Built-in sample, {len(fp32['golds'])} target users"
    metric, higher_better = primary_metric(task)
    golds = fp32["golds"]
    by_name = {m["name"]: m for m in bf16["methods"]}
    rows, data = [], []
    for m in fp32["methods"]:
        other = by_name.get(m["name"])
        if other is None or not m.get("predictions") or not other.get("predictions"):
            continue
        low, high = paired_difference_ci(task, metric, golds, other["predictions"], m["predictions"], args.seed)
        diff = other["metrics"][metric] - m["metrics"][metric]
        same = sum(m["predictions"][q] == other["predictions"][q] for q in golds)
        rows.append([m["name"], m["metrics"][metric], other["metrics"][metric], f"{diff:+.3f}",
                     f"{low:+.3f} .. {high:+.3f}", f"{same}/{len(golds)}"])
        data.append({"method": m["name"], f"{metric}_fp32": m["metrics"][metric],
                     f"{metric}_bf16": other["metrics"][metric], "difference": diff, "ci95": [low, high],
                     "same_answers": same})
    name = "precision_parity" if not args.task else f"precision_parity_{args.task}"
    result = Result(name, f"Quality parity: {'the demo' if not args.task else args.task} under bf16 against fp32",
                    {})
    better = "higher" if higher_better else "lower"
    result.tables.append(Table(f"{where} ({metric}, {better} is better)",
                               ["method", f"{metric} fp32", f"{metric} bf16", "bf16 - fp32", "paired 95% CI",
                                "same answers"], rows))
    if args.task:  # a work dir holds no wall time: the seconds of the methods both runs scored
        both = {d["method"] for d in data}
        for run in (fp32, bf16):
            run["wall_seconds"] = sum(m["train_seconds"] + m["predict_seconds"] for m in run["methods"]
                                      if m["name"] in both)
    result.data.update({"methods": data, "wall_seconds_fp32": fp32["wall_seconds"],
                        "wall_seconds_bf16": bf16["wall_seconds"], "runs": [str(args.fp32), str(args.bf16)]})
    what = "train + predict seconds of these methods" if args.task else "wall time"
    result.notes.append(f"{what[0].upper() + what[1:]}: fp32 {fp32['wall_seconds']:.0f} s, bf16 "
                        f"{bf16['wall_seconds']:.0f} s (the same machine; other jobs shared the cores).")
    result.write_and_print(args.out)


if __name__ == "__main__":
    main()
