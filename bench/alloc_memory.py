"""Resident memory of a records-in-the-prompt fine-tune (RAG's stage 1) under glibc's default malloc and with
a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_), the same job run twice one after the other.

    .venv/bin/python bench/alloc_memory.py --task LaMP_5R --examples 16     # about 5 + 8 min on one thread

Why: RAG's and PAG's fine-tunes on LaMP-5R grew to 16-18 GB resident on one thread while a step's own peak is
under 8 GB, in steps of 1-2 GB, so two of them could not share 24 GiB. glibc raises its mmap threshold each
time a large block is freed (up to 32 MiB), after which tensors of changing sizes (batches of changing
length) are carved from the heap, which fragments and is never given back. A fixed threshold keeps every
block over it in its own mapping, returned on free. Numbers are unaffected: only where the memory comes from.

Each arm is a child process (the env var is read when malloc starts) that loads the backbone, builds RAG on
the task's stage-1 users (bench/quality.py's choice, the first --examples questions and their replayed
history pairs) and runs its fine-tune from scratch; the parent samples the child's RSS every second. Writes
results/alloc_memory_<task>.{json,md,png}: peak and final RSS, wall time and their ratios.
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

from common import RESULTS, ROOT, Result, Table

DEFAULT = "glibc default (dynamic mmap threshold)"


def child(task: str, users: int, stage1_users: int, examples: int, threads: int, out: Path) -> None:
    """One arm: RAG's stage-1 fine-tune, from scratch, in this process."""
    import torch
    from quality import choose_users

    from tapper.backbone import load_backbone
    from tapper.baselines.registry import make_baseline
    from tapper.train import resolve_configs

    torch.set_num_threads(threads)
    others = choose_users(task, users, stage1_users, 0)[1]
    tcfg, cfg = resolve_configs(task, {}, {"stage1_max_examples": examples, "show_progress": False})
    rag = make_baseline("rag", load_backbone(tcfg.backbone), task, out / "rag")
    began = time.perf_counter()
    rag.fine_tune(others, out / "stage1-rag", tcfg, cfg)
    steps = sum(1 for _ in (out / "stage1-rag" / "train_log.jsonl").open())
    (out / "done.json").write_text(json.dumps({"train_seconds": time.perf_counter() - began, "steps": steps}))


def run_arm(env_extra: dict[str, str], args: argparse.Namespace) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix="tapper-alloc-") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", tmp, "--task", args.task,
               "--users", str(args.users), "--stage1-users", str(args.stage1_users), "--examples",
               str(args.examples), "--threads", str(args.threads)]
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, **env_extra}, cwd=ROOT)
        watched = psutil.Process(proc.pid)
        samples: list[tuple[float, float]] = []  # (seconds, GB)
        while proc.poll() is None:
            try:
                samples.append((time.perf_counter() - began, watched.memory_info().rss / 1e9))
            except psutil.Error:  # exited between poll and read
                pass
            time.sleep(1.0)
        if proc.returncode != 0:
            raise SystemExit(f"arm {env_extra or 'default'} failed with exit code {proc.returncode}")
        done = json.loads((Path(tmp) / "done.json").read_text())
    rss = [gb for _, gb in samples]
    return {"peak_gb": max(rss), "last_gb": rss[-1], "wall_seconds": time.perf_counter() - began, **done,
            "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="LaMP_5R")
    ap.add_argument("--users", type=int, default=60, help="target users (kept out of stage 1), as the quality run")
    ap.add_argument("--stage1-users", type=int, default=200)
    ap.add_argument("--examples", type=int, default=48, help="stage-1 questions fine-tuned on (plus their history)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--thresholds", default="131072",
                    help="comma-separated fixed mmap thresholds in bytes, one arm each after the default arm "
                         "(131072: glibc's starting value)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.task, args.users, args.stage1_users, args.examples, args.threads, args.child)
        return
    try:
        thresholds = [int(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--thresholds: {args.thresholds!r} is not a comma-separated list of byte counts")
    settings = {DEFAULT: {}, **{f"MALLOC_MMAP_THRESHOLD_={t}": {"MALLOC_MMAP_THRESHOLD_": str(t)} for t in thresholds}}
    arms = {name: run_arm(env, args) for name, env in settings.items()}
    base = arms[DEFAULT]
    rows = [[name, r["steps"], r["peak_gb"], r["peak_gb"] / base["peak_gb"], r["last_gb"], r["train_seconds"],
             r["train_seconds"] / base["train_seconds"]] for name, r in arms.items()]
    table = Table(f"RAG's stage-1 fine-tune on {args.task}: {args.examples} questions and their history pairs, "
                  f"{args.threads} torch thread(s), the arms one after the other",
                  ["malloc", "steps", "peak RSS GB", "peak / default", "final RSS GB", "train s",
                   "time / default"], rows)

    def plot(fig) -> None:
        ax = fig.subplots()
        for name, r in arms.items():
            ax.plot([t for t, _ in r["samples"]], [gb for _, gb in r["samples"]], label=name)
        ax.set_xlabel("seconds since the arm started")
        ax.set_ylabel("resident GB")
        ax.set_title(f"RAG's fine-tune on {args.task}, one arm after the other")
        ax.legend(fontsize=8)

    Result(f"alloc_memory_{args.task}", f"Resident memory of RAG's fine-tune on {args.task}, by malloc setting",
           {"task": args.task, "examples": args.examples, "threads": args.threads, "arms": arms}, [table],
           [f"{DEFAULT}: glibc raises its mmap threshold with each large block freed (up to 32 MiB); "
            "MALLOC_MMAP_THRESHOLD_=N: fixed at N bytes, every block over it mapped on its own and returned on "
            "free. Same job, same numbers; only the allocator differs."],
           ).write_and_print(args.out, plot)


if __name__ == "__main__":
    main()
