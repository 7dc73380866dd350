"""Every answer of kept results (<runs>/result_<method>.json of bench/quality.py) into results/answers/<name>.json,
for tables written before bench/quality.py kept their answers there, or by a worktree of other code whose runs dir
will not outlive the machine:

    .venv/bin/python bench/keep_answers.py --task LaMP_5R --name quality_LaMP_5R_s2ep4-pag-e44fb0e \
        /root/tapper-runs/LaMP_5R-s27-pag/result_pag.json

The file then pairs with anything on the same users through bench/pair_results.py "<file>#<method>". Its stamp
names the kept files it was made from (their own code is in each table's stamp, not this command's).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from common import RESULTS, command_line
from pair_results import read_kept

from tapper.compare.report import git_commit, write_answers
from tapper.data.tasks import TASKS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kept", nargs="+", type=Path, help="result_<method>.json files of one table's runs")
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--name", required=True, help="the table's name, e.g. quality_LaMP_4 (no .json)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    answers: dict[str, dict[str, str]] = {}
    for path in args.kept:
        kept = read_kept(path)
        if kept["name"] in answers:
            raise SystemExit(f"{path}: a second result named {kept['name']!r}")
        answers[kept["name"]] = kept["predictions"]
    stamp = {"command": command_line(), "commit": git_commit(), "kept_results": [str(p) for p in args.kept],
             "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")}
    print(f"wrote {write_answers(args.out, args.name, args.task, answers, stamp)}")


if __name__ == "__main__":
    main()
