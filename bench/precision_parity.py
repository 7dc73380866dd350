"""Quality parity of bf16 against fp32: the same demo run twice, once per dtype, compared question by question.

    .venv/bin/tapper demo --dtype fp32 --out runs/parity_fp32 --threads 1
    .venv/bin/tapper demo --dtype bf16 --out runs/parity_bf16 --threads 1
    .venv/bin/python bench/precision_parity.py --fp32 runs/parity_fp32 --bf16 runs/parity_bf16

Both runs share the code, the seed, the data and the batch order; only the precision differs. For every
method that both runs scored, the table gives MAE under each dtype and the paired 95% bootstrap interval of
bf16 - fp32 over the same questions. Writes results/precision_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, Result, Table

from tapper.compare.report import paired_difference_ci


def load(run: Path) -> dict:
    path = run / "demo_results.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if "golds" not in data:
        raise SystemExit(f"{path} has no per-question predictions: rerun the demo with this version of tapper")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, required=True, help="the fp32 demo's --out directory")
    ap.add_argument("--bf16", type=Path, required=True, help="the bf16 demo's --out directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    fp32, bf16 = load(args.fp32), load(args.bf16)
    if fp32["golds"] != bf16["golds"]:
        raise SystemExit("the two demo runs scored different questions")
    golds = fp32["golds"]
    by_name = {m["name"]: m for m in bf16["methods"]}
    rows, data = [], []
    for m in fp32["methods"]:
        other = by_name.get(m["name"])
        if other is None or not m.get("predictions") or not other.get("predictions"):
            continue
        low, high = paired_difference_ci("LaMP_3", "mae", golds, other["predictions"], m["predictions"], args.seed)
        diff = other["metrics"]["mae"] - m["metrics"]["mae"]
        same = sum(m["predictions"][q] == other["predictions"][q] for q in golds)
        rows.append([m["name"], m["metrics"]["mae"], other["metrics"]["mae"], f"{diff:+.3f}",
                     f"{low:+.3f} .. {high:+.3f}", f"{same}/{len(golds)}"])
        data.append({"method": m["name"], "mae_fp32": m["metrics"]["mae"], "mae_bf16": other["metrics"]["mae"],
                     "difference": diff, "ci95": [low, high], "same_answers": same})
    result = Result("precision_parity", "Quality parity: the demo under bf16 against fp32", {})
    result.tables.append(Table(f"Built-in sample, {len(golds)} target users (MAE, lower is better)",
                               ["method", "MAE fp32", "MAE bf16", "bf16 - fp32", "paired 95% CI", "same answers"],
                               rows))
    result.data.update({"methods": data, "wall_seconds_fp32": fp32["wall_seconds"],
                        "wall_seconds_bf16": bf16["wall_seconds"], "runs": [str(args.fp32), str(args.bf16)]})
    result.notes.append(f"Wall time: fp32 {fp32['wall_seconds']:.0f} s, bf16 {bf16['wall_seconds']:.0f} s "
                        "(the same machine, one after the other; other jobs shared the cores).")
    result.write_and_print(args.out)


if __name__ == "__main__":
    main()
