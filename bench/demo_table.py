"""The main job's table: results/demo_sample.{json,md} from a finished `tapper demo` run.

    bash scripts/demo.sh                                   # writes runs/demo/demo_results.json
    .venv/bin/python bench/demo_table.py --conditions "2 cores, quiet, stage 1 fresh"

The demo prints its own table; this keeps it in results/ with the command, commit and the conditions it ran
under (load on the machine changes the seconds, not the scores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, ROOT, Table, git_commit

from tapper.io_utils import atomic_write_text

DEMO_COMMAND = "bash scripts/demo.sh   (= .venv/bin/tapper demo)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="the demo's --out directory")
    ap.add_argument("--conditions", required=True, help="what else ran, threads, whether stage 1 was fresh")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    source = args.run / "demo_results.json"
    if not source.exists():
        raise SystemExit(f"{source} not found: run `bash scripts/demo.sh` (or tapper demo --out {args.run}) first")
    data = json.loads(source.read_text(encoding="utf-8"))
    data.update({"command": DEMO_COMMAND, "conditions": args.conditions, "commit": git_commit()})
    table = Table("16 target users, lower MAE / RMSE is better",
                  ["method", "MAE", "RMSE", "per-user params", "train s", "predict s"],
                  [[m["name"], f"{m['metrics']['mae']:.3f}", f"{m['metrics']['rmse']:.3f}", m["per_user_params"],
                    round(m["train_seconds"]), round(m["predict_seconds"])] for m in data["methods"]])
    lines = ["# Main job: TAP-PER on the built-in sample (LaMP-3 format, 16 target users)", "",
             f"Command: `{DEMO_COMMAND}`  ",
             f"Commit {data['commit']}. Conditions: {args.conditions}. Wall time {data['wall_seconds']:.0f} s "
             f"(stage 1: {data['stage1_seconds']:.0f} s).", "", table.markdown()]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "demo_sample.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(args.out / "demo_sample.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
