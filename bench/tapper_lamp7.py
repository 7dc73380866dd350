"""TAP-PER vs non-personalized on real LaMP-7 users (the issue-3 acceptance run).

    .venv/bin/python bench/tapper_lamp7.py --users 100 --stage1-users 300

One stage 1 (task LoRA on other users' questions) is shared; then the non-personalized LoRA and TAP-PER
train on the same target-user histories for the same steps, and everything is scored with ROUGE F on
the target users' questions, with bootstrap 95% intervals. The copy-the-input floor is reported beside.
Writes results/tapper_lamp7.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

from tapper.backbone import load_backbone
from tapper.baselines.floors import floors
from tapper.baselines.nonpersonal import nonpersonal_config, zero_shot_config
from tapper.data.lamp_io import read_split
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.experiment import (
    VariantResult,
    copy_backbone,
    evaluate_model,
    run_variant,
    score_with_int8_user_state,
    stage1,
)
from tapper.history_inputs import rewrite_history_inputs
from tapper.io_utils import atomic_write_text
from tapper.metrics import bootstrap_ci, evaluate
from tapper.prefix.model import TapperModel
from tapper.train import resolve_configs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "lamp7"


def pick_users(split: LampSplit, n_target: int, n_stage1: int, seed: int) -> tuple[LampSplit, LampSplit]:
    qs = list(split.questions)
    random.Random(seed).shuffle(qs)
    target, others = qs[:n_target], qs[n_target:n_target + n_stage1]
    return (LampSplit(split.task, others, split.golds), LampSplit(split.task, target, split.golds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100, help="target users (evaluated)")
    ap.add_argument("--stage1-users", type=int, default=300, help="other users for the task LoRA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "lamp7")
    ap.add_argument("--rewrite-history", action="store_true",
                    help="stage-2 pairs: backbone rewrite of each history tweet -> the tweet (else tweet -> tweet)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="train override key=value")
    args = ap.parse_args()
    began = time.perf_counter()

    split = read_split(DATA / "dev_questions.json", DATA / "dev_outputs.json", task="LaMP_7")
    others, target = pick_users(split, args.users, args.stage1_users, args.seed)
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    tcfg, cfg = resolve_configs("LaMP_7", {"backbone": args.model}, {"seed": args.seed, **overrides})
    backbone = load_backbone(args.model, device=args.device)
    golds = {q.id: split.gold(q.id) for q in target.questions}

    results: list[VariantResult] = []
    for name, preds in floors("LaMP_7", target).items():
        results.append(VariantResult(name, evaluate("LaMP_7", golds, preds), 0, 0, 0, preds))
    zero_shot = TapperModel(copy_backbone(backbone), zero_shot_config(tcfg))
    m, p, raw, s = evaluate_model(zero_shot, target, desc="zero-shot")
    results.append(VariantResult("zero-shot backbone", m, 0, 0, s, p, raw))
    history_inputs = None
    if args.rewrite_history:
        history_inputs = rewrite_history_inputs(backbone, get_task("LaMP_7"), target, cfg.max_history_pairs,
                                                args.runs / "history_rewrites.json")
    t0 = time.perf_counter()
    tuned = stage1(backbone, others, tcfg, cfg, args.runs / "tapper")
    s1 = time.perf_counter() - t0
    m, p, raw, s = evaluate_model(TapperModel(copy_backbone(tuned), zero_shot_config(tcfg)), target, desc="task LoRA")
    results.append(VariantResult("task LoRA (stage 1 only)", m, 0, s1, s, p, raw))
    results.append(run_variant("non-personalized, same budget", tuned, target, nonpersonal_config(tcfg), cfg,
                               args.runs / "nonpersonal", history_inputs=history_inputs))
    results.append(run_variant("TAP-PER", tuned, target, tcfg, cfg, args.runs / "tapper",
                               history_inputs=history_inputs))
    results.append(score_with_int8_user_state("TAP-PER, int8 user table", results[-1].model, target))

    rows = []
    for r in results:
        ci = bootstrap_ci("LaMP_7", golds, r.predictions, n=1000, seed=args.seed)
        rows.append({"method": r.name, "metrics": r.metrics, "ci95": ci, "per_user_params": r.per_user_params,
                     "train_seconds": round(r.train_seconds, 1), "predict_seconds": round(r.predict_seconds, 1),
                     "examples": {i: r.predictions[i] for i in list(r.predictions)[:5]}})
    command = "python " + " ".join(shlex.quote(a) for a in [f"bench/{Path(__file__).name}", *sys.argv[1:]])
    report = {"command": command, "task": "LaMP_7", "rewrite_history": args.rewrite_history,
              "target_users": len(target.questions),
              "stage1_users": len(others.questions), "seed": args.seed, "backbone": backbone.name,
              "model_config": tcfg.__dict__, "train_config": cfg.__dict__, "stage1_seconds": round(s1, 1),
              "wall_seconds": round(time.perf_counter() - began, 1), "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "tapper_lamp7.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# TAP-PER on LaMP-7 dev ({len(target.questions)} target users, {len(others.questions)} stage-1 users)",
             "", f"Command: `{command}`  ", f"Backbone: {backbone.name}; wall time {report['wall_seconds']:.0f} s.",
             "", "| method | ROUGE-1 | 95% CI | ROUGE-L | 95% CI | per-user params | train s |",
             "| --- | ---: | --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        m, ci = r["metrics"], r["ci95"]
        lines.append(f"| {r['method']} | {m['rouge-1']:.4f} | {ci['rouge-1'][0]:.3f}-{ci['rouge-1'][1]:.3f} | "
                     f"{m['rouge-L']:.4f} | {ci['rouge-L'][0]:.3f}-{ci['rouge-L'][1]:.3f} | "
                     f"{r['per_user_params']:,} | {r['train_seconds']:.0f} |")
    atomic_write_text(args.out / "tapper_lamp7.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
