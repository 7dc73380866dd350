"""1 vs N processes: stage-2 training throughput under torchrun (gloo, 1 torch thread a process) and sharded
onboarding into one SQLite store, on the built-in sample (LaMP-3).

    .venv/bin/python bench/distributed.py --model default --procs 1,2 --steps 8 --onboard-users 8

Training: `torchrun --standalone --nproc_per_node=N bench/distributed.py --worker train ...` runs stage 2
(P_u + P_q + bridge, no stage 1) for --steps steps at global batch --batch on the sample's target users'
history pairs; rank 0 reports the loop's tokens/s (every rank's real tokens over the loop's wall time) and the
mean step time. Onboarding: N `tapper onboard --db sqlite:///... --shard i/N` processes at once, each with
1 torch thread, over --onboard-users users; the wall time of the slowest is the shard's cost.
Writes results/distributed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import Result, Table  # noqa: E402

PY = sys.executable
TORCHRUN = str(Path(PY).with_name("torchrun"))


def worker_train(args) -> None:
    import torch

    from tapper import distributed
    from tapper.backbone import load_backbone
    from tapper.data.sample import load_sample
    from tapper.prefix import TapperModel
    from tapper.train import _loop, builder_for, history_examples, resolve_configs
    from tapper.train_loop import train

    torch.set_num_threads(1)
    distributed.init("cpu")
    tcfg, cfg = resolve_configs("LaMP_3", {"backbone": args.model}, {"batch_size": args.batch, "show_progress": False})
    split = load_sample()["test"]
    torch.manual_seed(cfg.seed)
    model = TapperModel(load_backbone(args.model), tcfg, sorted({q.user_id for q in split.questions}))
    examples = history_examples(builder_for(model, tcfg), split, cfg.max_history_pairs)
    model.user_state.weight.requires_grad_(True)
    params = [model.user_state.weight, *model.shared_parameters()]
    loop = _loop(cfg, cfg.stage2_lr, max_steps=args.steps)
    loop.checkpoint_every = 0
    weight = distributed.answer_weight(model.tokenizer, tcfg.max_answer_tokens)
    result = train(model, examples, model.loss, loop, params=params,
                   param_lrs={id(model.user_state.weight): cfg.user_lr}, row_sparse=[model.user_state.weight],
                   parallel=distributed.data_parallel(weight), desc="bench stage 2")
    if distributed.is_main():
        Path(args.report).write_text(json.dumps({
            "procs": distributed.world_size(), "steps": result.steps, "tokens": result.tokens,
            "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
            "seconds_per_step": result.seconds / result.steps, "final_loss": result.final_loss}) + "\n")
    distributed.teardown()


def run_train(args, procs: int, report: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = ["--worker", "train", "--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch),
              "--report", str(report)]
    cmd = ([PY, __file__, *worker] if procs == 1 else
           [TORCHRUN, "--standalone", f"--nproc_per_node={procs}", __file__, *worker])
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(report.read_text())


def run_onboard(args, procs: int, work: Path) -> dict:
    from tapper.data.sample import load_sample
    from tapper.distributed import shard_of
    from tapper.train import init_run

    run = work / "run"
    if not run.exists():
        init_run(run, backbone=args.model, task="LaMP_3")
        # An untrained run has no rows, and an all-zero start row gives SmolLM2 NaN gradients: stand-in rows
        # (N(0, init_std), as stage 2 starts them) make the mean row a trained run's kind of start.
        from tapper.prefix.model import TapperModel

        model = TapperModel.from_pretrained(run)
        model.user_state.add_users([f"stand-in-{i}" for i in range(16)])
        model.save_user_state(run)
    # the same users for every N, as many in each shard of the largest N (a hash split of 8 users is uneven)
    most = max(int(n) for n in args.procs.split(","))
    everyone = sorted({q.user_id for q in load_sample()["test"].questions})
    users = sorted(u for i in range(most) for u in [v for v in everyone if shard_of(v, most) == i]
                   [:args.onboard_users // most])
    db = work / f"onboard{procs}.db"
    questions = ROOT / "tapper" / "data" / "sample" / "test_questions.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    began = time.perf_counter()
    running = [subprocess.Popen([PY, "-m", "tapper.cli", "onboard", "--run", str(run), "--questions", str(questions),
                                 "--users", ",".join(users), "--steps", str(args.onboard_steps),
                                 "--db", f"sqlite:///{db}", "--tenant", "bench", "--shard", f"{i}/{procs}"],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) for i in range(procs)]
    outputs = [p.communicate()[0] for p in running]
    wall = time.perf_counter() - began
    if any(p.returncode for p in running):
        raise SystemExit(f"onboard failed: {outputs}")
    # each shard's own fitting time (after its model load), from its summary line "... in X s (...)"
    fit = max(float(out.split(" in ")[-1].split(" s")[0]) for out in outputs)
    split = [sum(shard_of(u, procs) == i for u in users) for i in range(procs)]
    return {"procs": procs, "users": len(users), "users_per_shard": split, "wall_seconds": wall, "fit_seconds": fit,
            "users_per_second": len(users) / fit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["train"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--onboard-users", type=int, default=8)
    ap.add_argument("--onboard-steps", type=int, default=4)
    ap.add_argument("--parts", default="train,onboard", help="train, onboard or both (a check of one part)")
    ap.add_argument("--report")
    args = ap.parse_args()
    if args.worker == "train":
        worker_train(args)
        return
    began = time.time()
    procs = [int(p) for p in args.procs.split(",")]
    train_rows, onboard_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("training:", flush=True)
        for n in procs if "train" in args.parts else ():
            train_rows.append(run_train(args, n, work / f"train{n}.json"))
            print(train_rows[-1], flush=True)
        for n in procs if "onboard" in args.parts else ():
            onboard_rows.append(run_onboard(args, n, work))
            print(onboard_rows[-1], flush=True)
    if args.parts != "train,onboard":
        return
    base_t, base_o = train_rows[0], onboard_rows[0]
    result = Result("distributed", f"1 vs N processes on {os.cpu_count()} CPUs ({args.model} backbone)",
                    {"model": args.model, "train": train_rows, "onboard": onboard_rows, "settings": vars(args)},
                    started=began)
    result.tables.append(Table(
        f"Stage 2, {args.steps} steps at global batch {args.batch} (torchrun, gloo, 1 torch thread a process)",
        ["processes", "tokens/s", "s/step", "speed-up", "final loss"],
        [[r["procs"], r["tokens_per_second"], r["seconds_per_step"],
          r["tokens_per_second"] / base_t["tokens_per_second"], r["final_loss"]] for r in train_rows]))
    result.tables.append(Table(
        f"Onboarding {args.onboard_users} users, {args.onboard_steps} steps each, N shards into one SQLite store",
        ["processes", "users per shard", "fit s (slowest shard)", "wall s (with model loads)", "users/s",
         "speed-up"],
        [[r["procs"], "/".join(map(str, r["users_per_shard"])), r["fit_seconds"], r["wall_seconds"],
          r["users_per_second"],
          r["users_per_second"] / base_o["users_per_second"]] for r in onboard_rows]))
    result.notes.append("Each process runs 1 torch thread, so N processes use N cores; other jobs on the machine "
                        "(see the load average) slow every figure.")
    result.write_and_print()


if __name__ == "__main__":
    main()
