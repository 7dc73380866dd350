"""How far each method's per-user parameters moved in training, next to the shared ones: read from the files a
bench/quality.py run keeps, no backbone and no forward pass.

    .venv/bin/python bench/per_user_drift.py --runs LaMP_2N=/root/tapper-runs/LaMP_2N \
        --runs LaMP_2=/root/tapper-runs/LaMP_2 --runs LaMP_3_magazine=/root/tapper-runs/LaMP_3_magazine

A per-user part that never left its start is noise, not a user. For each LoRA (the task LoRA of stage 1, the
control's and TAP-PER's bridge, each OPPU user's LoRA, each PER-PCS sharer's pieces) this reports the Frobenius
norm of its whole weight update, sqrt(sum over adapted projections of ||(alpha / r) B A||^2): LoRA starts at
B = 0, so this is exactly how far it moved the model. Per-user LoRAs give their median over users. TAP-PER's
user rows (P_u) give their mean per-token norm against the norm N(0, init_std) rows of that width start at
(bench/prefix_probe.py's measure). Writes results/per_user_drift.{json,md} (--name: another file name).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path

import torch
from common import RESULTS, Result, Table
from peft.utils import CONFIG_NAME as ADAPTER_CONFIG
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_FILE
from prefix_probe import rows_moved
from safetensors.torch import load_file

from tapper.baselines.common import CONFIG_NAME as BASELINE_CONFIG
from tapper.baselines.oppu import USERS_DIR
from tapper.baselines.perpcs import ANCHORS_DIR
from tapper.prefix.model import BRIDGE_DIR, TASK_ADAPTER_DIR


class DriftError(Exception):
    """A runs dir or adapter file that cannot be read as bench/quality.py keeps it; the message names it."""


def lora_update_norm(weights: dict[str, torch.Tensor], alpha: float, r: int, where: Path) -> float:
    """||(alpha / r) B A||_F over every adapted projection of one LoRA state dict (peft's key names)."""
    total, pairs = 0.0, 0
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        b = weights.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise DriftError(f"{where}: {key} has no matching lora_B")
        total += float(((alpha / r) * (b.float() @ a.float())).norm() ** 2)
        pairs += 1
    if not pairs:
        raise DriftError(f"{where}: no lora_A/lora_B weights")
    return total ** 0.5


def peft_adapter_norm(adapter_dir: Path) -> float:
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    return lora_update_norm(load_file(adapter_dir / ADAPTER_FILE), cfg["lora_alpha"], cfg["r"], adapter_dir)


def per_user_norms(files: Iterable[Path], config: Path) -> list[float]:
    """One update norm per user file of a per-user baseline (r and alpha from its baseline_config.json)."""
    cfg = json.loads(config.read_text())
    return [lora_update_norm(load_file(f), cfg["alpha"], cfg["r"], f) for f in sorted(files)]


def drift_of_run(runs: Path) -> dict[str, dict]:
    """{part: {"users", "value", "at_init"} (per-user parts also "min", "max")} for every part a quality runs
    dir holds: "value" is the update norm (per-user LoRAs: the median user) or P_u's mean per-token norm."""
    out: dict[str, dict] = {}
    if (runs / "tapper").is_dir():
        moved = rows_moved(runs / "tapper")
        out["TAP-PER user rows (P_u), per token"] = {
            "users": moved["rows"], "value": moved["token_norm_mean"], "at_init": moved["token_norm_at_init"]}
    for name, adapter in (("task LoRA (stage 1)", runs / "nonpersonal" / TASK_ADAPTER_DIR),
                          ("control's bridge LoRA (all target users)", runs / "nonpersonal" / BRIDGE_DIR),
                          ("TAP-PER's bridge LoRA (all target users)", runs / "tapper" / BRIDGE_DIR)):
        if (adapter / ADAPTER_FILE).is_file():
            out[name] = {"users": None, "value": peft_adapter_norm(adapter), "at_init": 0.0}
    for name, folder, config in (("OPPU LoRA, one per user", runs / "oppu" / USERS_DIR, runs / "oppu"),
                                 ("PER-PCS sharer's pieces, one per sharer", runs / "perpcs" / ANCHORS_DIR / USERS_DIR,
                                  runs / "perpcs")):
        files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
        if files:
            norms = per_user_norms(files, config / BASELINE_CONFIG)
            out[name] = {"users": len(norms), "value": statistics.median(norms), "min": min(norms),
                         "max": max(norms), "at_init": 0.0}
    if not out:
        raise DriftError(f"{runs}: no trained parts of a bench/quality.py run (tapper/, nonpersonal/, oppu/, ...)")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", required=True, metavar="LABEL=DIR",
                    help="a bench/quality.py work dir (--runs), named; repeatable")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="per_user_drift",
                    help="file name of the results (<out>/<name>.json, .md): another set of runs beside the main one")
    args = ap.parse_args(argv)
    tasks = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            ap.error(f"--runs {item!r}: expected LABEL=DIR")
        try:
            tasks[label] = {"runs": folder, "parts": drift_of_run(Path(folder))}
        except (DriftError, OSError, KeyError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
    rows = []
    for label, t in tasks.items():
        for part, d in t["parts"].items():
            spread = f"{d['min']:.4f} - {d['max']:.4f}" if "min" in d else ""
            rows.append([label, part, d["users"] if d["users"] is not None else "shared", d["value"], spread,
                         d["at_init"]])
    table = Table("How far each trained part moved from its start (LoRA: ||(alpha/r) B A||_F over its projections, "
                  "median over users for per-user ones; P_u: mean per-token norm)",
                  ["task", "part", "users", "moved (norm)", "min - max over users", "at init"], rows)
    Result(args.name, "How far per-user and shared parameters moved in training",
           {"tasks": tasks}, [table],
           ["A LoRA starts at B = 0, so its update norm is 0 at init; P_u rows start at N(0, init_std), whose "
            "per-token norm is init_std * sqrt(d)."]).write_and_print(args.out)


if __name__ == "__main__":
    main()
