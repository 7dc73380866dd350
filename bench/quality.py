"""Quality on real users: every method on one task, same backbone, same users, same metric, 95% intervals.

    .venv/bin/python bench/quality.py --task LaMP_7 --users 100 --rewrite-history  # LaMP-7 dev
    .venv/bin/python bench/quality.py --task LaMP_3 --users 69              # Amazon Beauty -> LaMP-3
    .venv/bin/python bench/quality.py --task LaMP_4 --users 100             # HuffPost -> LaMP-4
    .venv/bin/python bench/quality.py --task LaMP_2N --users 96             # HuffPost -> LaMP-2N
    .venv/bin/python bench/quality.py --task LaMP_2                         # MovieLens + TMDB -> LaMP-2 (movies)
    .venv/bin/python bench/quality.py --task LaMP_5R                        # Reddit posts -> LaMP-5R (titles)
    .venv/bin/python bench/quality.py --task LaMP_3 --source magazine       # Amazon Magazines -> LaMP-3
    .venv/bin/python bench/quality.py --task LaMP_3 --users 4 --backbone tiny --stage1-users 8 \
        --out /tmp/q --runs /tmp/q/runs                                     # smoke check (~2 min)

Users. LaMP-7: the dev questions, shuffled with --seed; the first --users are the targets, the next
--stage1-users the "other users" of stage 1; --val-users K scores instead the K users after those (same stage 1),
so a setting can be chosen without looking at the targets (on a built task, the K users outside the targets and
stage 1 with the longest histories). --val-latest scores instead the targets themselves on their latest
history item, held out of their history (their queries stay unseen): the validation set for a task whose every
eligible user is a target (LaMP-2N, Magazine). The other tasks are built from the raw dumps with each user's
latest item as the query and everything earlier as the profile (the builders' "user" split, pooled);
targets are --users users with at least --min-profile earlier items, sampled with --seed, and stage 1 uses
the latest items of every other user (up to --stage1-users).

Methods (--methods, default all): naive floors; zero-shot backbone; task LoRA alone (stage 1);
non-personalized with TAP-PER's stage-2 budget; TAP-PER; with --ablations also TAP-PER without P_u,
without P_q, without time decay, without the bridge; RAG (k=4); PAG; OPPU; PER-PCS (anchors: the
non-target users with the longest histories); PPlug. Stage 1 is trained once and shared. "onboard" (in the
default set) holds --onboard-users targets out of TAP-PER's stage 2, onboards them one P_u row at a time
(everything shared frozen; one fit per --onboard-steps budget, and per --onboard-lrs rate when given, plus
no fit at all), and compares them with OPPU and TAP-PER on those same new users, with the training seconds
each method spends per user. Every
method's result is kept in --runs as it finishes, so a killed run picks up where it stopped (--fresh ignores them).
--set key=value overrides the task's model or training config (tapper/configs/<task>.json) for every
method: the peers take the same input and answer lengths, history pairs, epochs, batch size and seed.
--rewrite-history (LaMP-7) replays each history tweet from a filtered backbone rewrite instead of from
itself, for every method that trains on the target users' histories (see tapper.history_inputs).
--pag-summarizer gives PAG another summarizer than the backbone (an instruction-tuned one for a base model).
Writes results/quality_<task>.{json,md,png} with bootstrap 95% intervals (1,000 resamples, --seed).
Every answer of every method goes to results/answers/quality_<task>.json (LaMP's output format per method), so
any two results can be paired later without the runs dir (bench/pair_results.py "<file>#<method>").

This script only chooses this repository's users; the comparison itself (the methods' wiring, kept results,
the report) is tapper.compare, the same code `tapper compare` runs on anyone's LaMP files.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from common import ROOT, SHARED_DATA, command_line, git_commit

from tapper.backbone import DEFAULT_SPECS
from tapper.compare import (
    ABLATIONS,
    CORE,
    PEER_VARIANTS,
    CompareSpec,
    HoldOutError,
    NothingToTrain,
    parse_methods,
    run_comparison,
)
from tapper.compare.report import COLD, ONBOARDED, is_new_user_result, onboarded_name  # noqa: F401 (re-exported)
from tapper.compare.runner import fingerprint, method_fingerprint  # noqa: F401 (re-exported)
from tapper.data.builders import BUILDERS
from tapper.data.lamp_io import read_split
from tapper.data.records import LampSplit, Question
from tapper.data.tasks import get_task
from tapper.log_lines import show_tapper_log
from tapper.prefix.config import TapperConfig
from tapper.settings import SettingError, parse_overrides, split_overrides
from tapper.train import TrainConfig

SOURCES = {
    "LaMP_3": ("amazon-lamp3", SHARED_DATA / "amazon2018" / "All_Beauty_5.json"),
    "LaMP_4": ("huffpost-lamp4", SHARED_DATA / "huffpost" / "News_Category_Dataset_v2.partial.json"),
    "LaMP_2N": ("huffpost-lamp2n", SHARED_DATA / "huffpost" / "News_Category_Dataset_v2.partial.json"),
    "LaMP_2": ("movielens-lamp2", SHARED_DATA / "movielens"),
    "LaMP_5R": ("reddit-lamp5r", SHARED_DATA / "reddit" / "reddit_college_posts.jsonl"),
}
# Other raw dumps of a task (--source): name -> (task, builder, dump). Results go to quality_<task>_<name>.
OTHER_SOURCES = {
    "magazine": ("LaMP_3", "amazon-lamp3", SHARED_DATA / "amazon2018" / "Magazine_Subscriptions_5.json"),
}


# -- users --------------------------------------------------------------------------------------------

def _subset(questions: list[Question], golds: dict[str, str], task: str) -> LampSplit:
    return LampSplit(task, questions, {q.id: golds[q.id] for q in questions})


def lamp7_users(n: int, n_stage1: int, seed: int, n_val: int = 0
                ) -> tuple[LampSplit, LampSplit, LampSplit, dict]:
    """(targets, stage-1 users, every non-target user, data info). With n_val, the targets are instead the
    n_val users after the stage-1 users: a validation set disjoint from both, for choosing settings without
    looking at the test users, while stage 1 stays exactly the test run's."""
    folder = SHARED_DATA / "lamp7"
    split = read_split(folder / "dev_questions.json", folder / "dev_outputs.json", task="LaMP_7")
    qs = list(split.questions)
    random.Random(seed).shuffle(qs)
    info = {"source": str(folder / "dev_questions.json"), "pool": len(qs)}
    stage1_users = _subset(qs[n:n + n_stage1], split.golds, "LaMP_7")
    if n_val:
        if n + n_stage1 + n_val > len(qs):
            raise SystemExit(f"--val-users {n_val}: only {len(qs) - n - n_stage1} users are left after the "
                             f"{n} targets and {n_stage1} stage-1 users")
        val = qs[n + n_stage1:n + n_stage1 + n_val]
        info["validation_users"] = f"dev users {n + n_stage1}..{n + n_stage1 + n_val - 1} after shuffling"
        return _subset(val, split.golds, "LaMP_7"), stage1_users, _subset(qs[n + n_stage1:], split.golds,
                                                                         "LaMP_7"), info
    return _subset(qs[:n], split.golds, "LaMP_7"), stage1_users, _subset(qs[n:], split.golds, "LaMP_7"), info


def built_users(task: str, n: int, n_stage1: int, seed: int, min_profile: int, source: str | None = None,
                n_val: int = 0) -> tuple[LampSplit, LampSplit, LampSplit, dict]:
    """Latest item per user as the query (the builders' user split, its three parts pooled). With n_val, the
    targets are instead the n_val users outside both the targets and stage 1 with the longest histories (at
    least one earlier item): the dumps have no spare users with --min-profile items, so validation users are
    the nearest thing, new users with short histories, and stage 1 stays exactly the test run's."""
    name, path = SOURCES[task] if source is None else OTHER_SOURCES[source][1:]
    built = BUILDERS[name](path, split="user", seed=seed, min_profile=0)
    questions = [q for part in built.values() for q in part.questions]
    golds = {k: v for part in built.values() for k, v in (part.golds or {}).items()}
    eligible = sorted((q for q in questions if len(q.profile) >= min_profile), key=lambda q: q.user_id)
    random.Random(seed).shuffle(eligible)
    targets = eligible[:n]
    chosen = {q.user_id for q in targets}
    others = sorted((q for q in questions if q.user_id not in chosen), key=lambda q: q.user_id)
    random.Random(seed + 1).shuffle(others)
    info = {"source": str(path), "builder": name, "users_in_dump": len(questions),
            f"users_with_min_profile_{min_profile}": len(eligible)}
    stage1_users = _subset(others[:n_stage1], golds, task)
    if n_val:
        spare = sorted((q for q in others[n_stage1:] if q.profile), key=lambda q: -len(q.profile))  # stable
        if len(spare) < n_val:
            raise SystemExit(f"--val-users {n_val}: only {len(spare)} users outside the {len(targets)} targets "
                             f"and {n_stage1} stage-1 users have an earlier item")
        val = spare[:n_val]
        info["validation_users"] = (f"{n_val} users outside the targets and stage 1 with the longest histories "
                                    f"({min(len(q.profile) for q in val)}-{max(len(q.profile) for q in val)} "
                                    "earlier items)")
        return _subset(val, golds, task), stage1_users, _subset(others, golds, task), info
    return _subset(targets, golds, task), stage1_users, _subset(others, golds, task), info


def choose_users(task: str, n: int, n_stage1: int, seed: int, min_profile: int = 3, source: str | None = None,
                 n_val: int = 0) -> tuple[LampSplit, LampSplit, LampSplit, dict]:
    """(targets, stage-1 users, pool, data info) as this script chooses them: every bench that scores the
    targets of a quality run (prefix_probe, pair_results, precision_parity) rebuilds them through here."""
    if task == "LaMP_7":
        return lamp7_users(n, n_stage1, seed, n_val)
    return built_users(task, n, n_stage1, seed, min_profile, source, n_val)


def _numbers(text: str | None, kind: type, option: str, ap: argparse.ArgumentParser) -> list | None:
    if not text:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ap.error(f"{option}: {text!r} is not a comma-separated list of {kind.__name__} values")
    if not values or any(v <= 0 for v in values):
        ap.error(f"{option}: every value must be positive")
    return values


def run_label(task: str, source: str | None, backbone: str = DEFAULT_SPECS[0], tag: str = "") -> str:
    """Names a run's results: quality_<label>.*. Another source or backbone gets its own name, so a Gemma run
    never overwrites the default backbone's table; a tag names a run of other settings (e.g. `s2ep4`), so its
    json, md and plot are written under one name rather than renamed by hand afterwards."""
    label = task if source is None else f"{task}_{source}"
    if backbone.strip().lower() not in DEFAULT_SPECS:
        label += "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", Path(backbone).name)
    if tag:
        label += "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", tag)
    return label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["LaMP_7", *SOURCES])
    ap.add_argument("--source", choices=list(OTHER_SOURCES), default=None,
                    help="build the task from another dump: " + ", ".join(
                        f"{k} ({path.name} -> {t})" for k, (t, _, path) in OTHER_SOURCES.items()))
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stage1-users", type=int, default=300)
    ap.add_argument("--min-profile", type=int, default=3, help="built tasks: earlier items a target user needs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="default")
    ap.add_argument("--methods", default="all",
                    help=f"comma-separated subset of {','.join(CORE)} (or single ablations: {','.join(ABLATIONS)}; "
                         f"peer variants: {','.join(PEER_VARIANTS)})")
    ap.add_argument("--ablations", action="store_true", help="add TAP-PER's four ablations")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--runs", type=Path, default=None, help="work dir (default runs/quality/<task>-...)")
    ap.add_argument("--fresh", action="store_true", help="ignore results kept from an earlier run")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--tag", default="", help="appended to the results' name, before any _val suffix: "
                    "quality_<task>_<tag>[_val_latest].* for a run of other settings (--set)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="model or train config override, parsed by the field's type, for every method; "
                         "repeatable")
    ap.add_argument("--rewrite-history", action="store_true",
                    help="LaMP-7: stage-2 pairs are (filtered backbone rewrite of a history tweet -> the tweet)")
    ap.add_argument("--pag-summarizer", default=None, metavar="BACKBONE",
                    help="PAG's summarizer (default: the backbone itself, untuned); an instruction-tuned model "
                         "for a base backbone, e.g. --backbone gemma3-270m --pag-summarizer default")
    ap.add_argument("--val-users", type=int, default=0,
                    help="score K validation users instead of the targets (LaMP-7: the users after the stage-1 "
                         "users; built tasks: the users outside targets and stage 1 with the longest histories); "
                         "same stage 1; results go to <runs>/val-<settings> and quality_<task>_val.*")
    ap.add_argument("--val-latest", action="store_true",
                    help="score the targets on their latest history item, held out of their history, instead of "
                         "their query (validation without spare users); results go to <runs>/val-latest-<settings> "
                         "and quality_<task>_val_latest.*")
    ap.add_argument("--onboard-users", type=int, default=10,
                    help="target users held out of stage 2 and onboarded later (at most half the targets)")
    ap.add_argument("--onboard-steps", default=None,
                    help="comma-separated P_u fit budgets for the onboarded users, each fitted from the mean row "
                         "(default: the config's onboard_steps)")
    ap.add_argument("--onboard-lrs", default=None,
                    help="comma-separated P_u fit learning rates, e.g. 1e-3,3e-3,1e-2: every (rate, budget) is a "
                         "result of its own, named with its rate (default: the config's onboard_lr alone)")
    args = ap.parse_args()
    show_tapper_log()  # progress and stage lines in a background run's log
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task = get_task(args.task).name
    try:  # each value parsed by its field's type: use_bridge=no is False, prefix_len=abc an error
        model_over, train_over = split_overrides(parse_overrides(args.overrides, (TapperConfig, TrainConfig)),
                                                 (TapperConfig, TrainConfig))
    except SettingError as err:
        ap.error(f"--set: {err}")
    try:
        wanted = parse_methods(args.methods, args.ablations)
    except ValueError as err:
        ap.error(str(err))
    onboard_steps = _numbers(args.onboard_steps, int, "--onboard-steps", ap)
    onboard_lrs = _numbers(args.onboard_lrs, float, "--onboard-lrs", ap)
    if args.source is not None and OTHER_SOURCES[args.source][0] != task:
        ap.error(f"--source {args.source} builds {OTHER_SOURCES[args.source][0]}, not {task}")
    label = run_label(task, args.source, args.backbone, args.tag)
    # the default work dir names its backbone once, as it did before results were named by backbone
    runs = args.runs or ROOT / "runs" / "quality" / (f"{run_label(task, args.source)}-n{args.users}-s{args.seed}-"
                                                    f"{args.backbone}")

    target, others, pool, data_info = choose_users(task, args.users, args.stage1_users, args.seed, args.min_profile,
                                                   args.source, args.val_users)
    spec = CompareSpec(
        task=task, target=target, others=others, pool=pool, label=label, data_info=data_info,
        data_settings={"stage1_users": args.stage1_users, "min_profile": args.min_profile}, methods=wanted,
        backbone=args.backbone, seed=args.seed, model_overrides=model_over, train_overrides=train_over,
        rewrite_history=args.rewrite_history, pag_summarizer=args.pag_summarizer, onboard_users=args.onboard_users,
        onboard_steps=onboard_steps, onboard_lrs=onboard_lrs, val_users=args.val_users, val_latest=args.val_latest,
        fresh=args.fresh)
    try:
        report = run_comparison(spec, runs)
    except (NothingToTrain, HoldOutError) as err:  # e.g. --rewrite-history with no usable rewrite
        raise SystemExit(str(err)) from None
    for path in report.write(args.out, command=command_line(), commit=git_commit()):
        print(f"wrote {path}")
    print(report.text())


if __name__ == "__main__":
    main()
