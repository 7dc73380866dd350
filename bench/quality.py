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
so a setting can be chosen without looking at the targets. The other tasks are built from the raw dumps with each user's
latest item as the query and everything earlier as the profile (the builders' "user" split, pooled);
targets are --users users with at least --min-profile earlier items, sampled with --seed, and stage 1 uses
the latest items of every other user (up to --stage1-users).

Methods (--methods, default all): naive floors; zero-shot backbone; task LoRA alone (stage 1);
non-personalized with TAP-PER's stage-2 budget; TAP-PER; with --ablations also TAP-PER without P_u,
without P_q, without time decay, without the bridge; RAG (k=4); PAG; OPPU; PER-PCS (anchors: the
non-target users with the longest histories); PPlug. Stage 1 is trained once and shared. "onboard" (in the
default set) holds --onboard-users targets out of TAP-PER's stage 2, onboards them one P_u row at a time
(everything shared frozen; one fit per --onboard-steps budget, plus no fit at all), and compares them with
OPPU and TAP-PER on those same new users, with the training seconds each method spends per user. Every
method's result is kept in --runs as it finishes, so a killed run picks up where it stopped (--fresh ignores them).
--set key=value overrides the task's model or training config (tapper/configs/<task>.json) for every
method: the peers take the same input and answer lengths, history pairs, epochs, batch size and seed.
--rewrite-history (LaMP-7) replays each history tweet from a filtered backbone rewrite instead of from
itself, for every method that trains on the target users' histories (see tapper.history_inputs).
Writes results/quality_<task>.{json,md,png} with bootstrap 95% intervals (1,000 resamples, --seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from common import ROOT, SHARED_DATA, Result, Table

from tapper.backbone import Backbone, load_backbone
from tapper.baselines.common import RECIPE_KEYS, make_baseline, nonpersonal_backbone, run_baseline
from tapper.baselines.floors import floors
from tapper.baselines.nonpersonal import nonpersonal_config, zero_shot_config
from tapper.data.builders import BUILDERS
from tapper.data.lamp_io import read_split
from tapper.data.records import LampSplit, Question
from tapper.data.tasks import get_task
from tapper.experiment import (
    VariantResult,
    copy_backbone,
    evaluate_model,
    primary_metric,
    run_variant,
    score_with_int8_user_state,
    stage1,
)
from tapper.history_inputs import rewrite_history_inputs
from tapper.io_utils import atomic_replace_dir, atomic_write_text
from tapper.metrics import METRIC_NAMES, bootstrap_ci, evaluate
from tapper.prefix.config import TapperConfig
from tapper.prefix.model import BRIDGE_DIR, CONFIG_NAME, TapperModel
from tapper.settings import SettingError, parse_overrides, source_hash, split_overrides
from tapper.train import TrainConfig, builder_for, history_examples, onboard_user, resolve_configs, train_prefixes
from tapper.train_loop import ROW_SPARSE_OPTIMIZER

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
CORE = ["floors", "zero-shot", "task-lora", "nonpersonal", "tapper", "rag", "pag", "oppu", "perpcs", "pplug",
        "onboard"]
COLD = "TAP-PER, new user without a fit (mean row + P_q)"
ONBOARDED = "TAP-PER, onboarded"


def onboarded_name(steps: int) -> str:
    return f"{ONBOARDED} ({steps}-step P_u fit)"


def is_new_user_result(name: str) -> bool:
    """Scored on the held-out users only: reported in the onboarding table, not the main one."""
    return name == COLD or name.startswith(ONBOARDED)


ABLATIONS = {
    "no-pu": ("TAP-PER without P_u", {"use_user_state": False}),
    "no-pq": ("TAP-PER without P_q", {"use_query_prefix": False}),
    "no-time": ("TAP-PER without time decay", {"use_time_decay": False}),
    "no-bridge": ("TAP-PER without the bridge", {"use_bridge": False}),
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


def built_users(task: str, n: int, n_stage1: int, seed: int, min_profile: int, source: str | None = None
                ) -> tuple[LampSplit, LampSplit, LampSplit, dict]:
    """Latest item per user as the query (the builders' user split, its three parts pooled)."""
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
    return _subset(targets, golds, task), _subset(others[:n_stage1], golds, task), _subset(others, golds, task), info


# -- running methods, each result kept on disk ------------------------------------------------------------

STAGE1_KEYS = ("backbone", "task_lora_r", "task_lora_alpha", "task_lora_dropout", "lora_targets", "max_input_tokens",
               "max_answer_tokens", "seed", "batch_size", "stage1_lr", "stage1_epochs", "stage1_max_examples",
               "stage1_history_pairs", "warmup_ratio", "weight_decay", "max_grad_norm")


# Settings that only the user table, or only a prefix, reads: a method without them keeps its result when
# they change, so a sweep over user_lr or the prefix does not retrain the peers.
USER_STATE_KEYS = ("user_lr", "onboard_steps", "onboard_lr", "init_std", "user_rows_optimizer")
ONBOARD_KEYS = ("onboard_steps", "onboard_lr")  # read by the onboarding rows alone
PREFIX_KEYS = ("prefix_len", "top_k", "anchor_text", "use_time_decay", "use_order_decay", "max_record_tokens",
               "max_query_tokens")
WITHOUT_PREFIX = {"zero-shot", "task-lora", "nonpersonal", "rag", "pag", "oppu", "perpcs", "pplug"}


# Options added after results were kept: at these values they change nothing, so they are left out of the
# settings a fingerprint hashes. (The fingerprint also hashes the package source, so results kept before any
# code change are run again all the same.)
NEUTRAL_DEFAULTS = {"anchor_text": None, "constrain_answers": False}


def fingerprint(settings: dict) -> str:
    """The tag of what made a kept result: its settings and the tapper source that ran them (every .py and
    .json of the package, tapper.settings.source_hash), so a code change is never mistaken for a match."""
    settings = {k: v for k, v in settings.items() if k not in NEUTRAL_DEFAULTS or v != NEUTRAL_DEFAULTS[k]}
    payload = {"settings": settings, "tapper_source": source_hash()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def method_fingerprint(key: str, settings: dict) -> str:
    ignored = set() if key.startswith("onboard") else set(ONBOARD_KEYS)
    if key in WITHOUT_PREFIX:
        ignored |= {*USER_STATE_KEYS, *PREFIX_KEYS}
    elif key == "no-pu":
        ignored |= set(USER_STATE_KEYS)
    settings = {k: v for k, v in settings.items() if k not in ignored}
    return fingerprint(settings)


class Runner:
    """Runs each method once and keeps its result on disk, tagged with the settings that made it: a result
    from other settings (another --set, another --rewrite-history) is run again, never reused. A method's
    tag covers only the settings it reads (see method_fingerprint); a result tagged with every setting of
    this very run is reused too (and re-tagged)."""

    def __init__(self, runs: Path, fresh: bool, settings: dict):
        self.runs = runs
        self.fresh = fresh
        self.settings = settings
        self.models: dict[str, TapperModel | None] = {}
        runs.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, make: Callable[[], VariantResult]) -> VariantResult:
        path = self.runs / f"result_{key}.json"
        tag = method_fingerprint(key, self.settings)
        if path.exists() and not self.fresh:
            kept = json.loads(path.read_text(encoding="utf-8"))
            if kept.pop("settings", None) in (tag, fingerprint(self.settings)):
                print(f"[{key}] reusing {path}", flush=True)
                atomic_write_text(path, json.dumps({**kept, "settings": tag}, ensure_ascii=False) + "\n")
                return VariantResult(**kept)
            print(f"[{key}] {path} was made with other settings: running again", flush=True)
        print(f"[{key}] running", flush=True)
        began = time.perf_counter()
        result = make()
        self.models[key] = result.model
        result.model = None  # the result is kept as numbers; the trained model only as long as it is needed
        kept = {k: v for k, v in asdict(result).items() if k != "model"}
        atomic_write_text(path, json.dumps({**kept, "settings": tag}, ensure_ascii=False) + "\n")
        print(f"[{key}] {result.name}: {result.metrics} ({time.perf_counter() - began:.0f} s)", flush=True)
        return result


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
                    help=f"comma-separated subset of {','.join(CORE)} (or single ablations: {','.join(ABLATIONS)})")
    ap.add_argument("--ablations", action="store_true", help="add TAP-PER's four ablations")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--runs", type=Path, default=None, help="work dir (default runs/quality/<task>-...)")
    ap.add_argument("--fresh", action="store_true", help="ignore results kept from an earlier run")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="model or train config override, parsed by the field's type, for every method; "
                         "repeatable")
    ap.add_argument("--rewrite-history", action="store_true",
                    help="LaMP-7: stage-2 pairs are (filtered backbone rewrite of a history tweet -> the tweet)")
    ap.add_argument("--val-users", type=int, default=0,
                    help="LaMP-7: score K validation users (after the stage-1 users) instead of the targets; "
                         "same stage 1; results go to <runs>/val-<settings> and quality_<task>_val.*")
    ap.add_argument("--onboard-users", type=int, default=10,
                    help="target users held out of stage 2 and onboarded later (at most half the targets)")
    ap.add_argument("--onboard-steps", default=None,
                    help="comma-separated P_u fit budgets for the onboarded users, each fitted from the mean row "
                         "(default: the config's onboard_steps)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task = get_task(args.task).name
    try:  # each value parsed by its field's type: use_bridge=no is False, prefix_len=abc an error
        model_over, train_over = split_overrides(parse_overrides(args.overrides, (TapperConfig, TrainConfig)),
                                                 (TapperConfig, TrainConfig))
    except SettingError as err:
        ap.error(f"--set: {err}")
    wanted = CORE if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(wanted) - set(CORE) - set(ABLATIONS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {', '.join(CORE + list(ABLATIONS))}")
    if args.ablations:
        wanted += list(ABLATIONS)
    if args.source is not None and OTHER_SOURCES[args.source][0] != task:
        ap.error(f"--source {args.source} builds {OTHER_SOURCES[args.source][0]}, not {task}")
    label = task if args.source is None else f"{task}_{args.source}"  # names the runs dir and the results
    runs = args.runs or ROOT / "runs" / "quality" / f"{label}-n{args.users}-s{args.seed}-{args.backbone}"
    result = Result(f"quality_{label}", f"Quality on {label}: every method, same backbone and users", {})

    if task == "LaMP_7":
        target, others, pool, data_info = lamp7_users(args.users, args.stage1_users, args.seed, args.val_users)
    elif args.val_users:
        ap.error("--val-users is only defined for LaMP_7 (the built tasks have no users to spare)")
    else:
        target, others, pool, data_info = built_users(task, args.users, args.stage1_users, args.seed,
                                                      args.min_profile, args.source)
    golds = target.golds or {}
    tcfg, cfg = resolve_configs(task, {"backbone": args.backbone, **model_over}, {"seed": args.seed, **train_over})
    # the peers' harness settings come from the same resolved configs, so --set reaches every method
    shared = {"seed": cfg.seed, "max_history_pairs": cfg.max_history_pairs, "stage2_epochs": cfg.stage2_epochs,
              "batch_size": cfg.batch_size, "max_input_tokens": tcfg.max_input_tokens,
              "max_answer_tokens": tcfg.max_answer_tokens, "constrain_answers": tcfg.constrain_answers,
              **{k: getattr(cfg, k) for k in RECIPE_KEYS}}
    all_settings = {**asdict(tcfg), **asdict(cfg), "rewrite_history": args.rewrite_history,
                    "user_rows_optimizer": ROW_SPARSE_OPTIMIZER,
                    "stage1_users": args.stage1_users, "min_profile": args.min_profile}
    all_settings.pop("show_progress")
    stage1_dir = runs / f"stage1-{fingerprint({k: all_settings[k] for k in (*STAGE1_KEYS, 'stage1_users')})}"
    rewrites_cache = runs / "history_rewrites.json"  # keyed by (backbone, text): one cache for every user set
    if args.val_users:
        all_settings["val_users"] = args.val_users
        runs = runs / f"val{args.val_users}-{fingerprint(all_settings)}"  # one dir per setting of a sweep
        result.name += "_val"
        result.title = f"Quality on {task}, {args.val_users} validation users (not the targets): settings chosen here"
    runner = Runner(runs, args.fresh, all_settings)
    backbone = load_backbone(args.backbone)
    history_inputs = None
    if args.rewrite_history:
        history_inputs = rewrite_history_inputs(backbone, get_task(task), target, cfg.max_history_pairs,
                                                rewrites_cache)
        data_info["rewritten_history_pairs"] = len(history_inputs)
        if not history_inputs:
            raise SystemExit(f"--rewrite-history: no rewrite by {backbone.name} passed the overlap filter "
                             f"(see {rewrites_cache}); nothing to train stage 2 on")
    results: list[VariantResult] = []

    if "floors" in wanted:
        for name, preds in floors(task, target, others).items():
            results.append(VariantResult(name, evaluate(task, golds, preds), 0, 0.0, 0.0, preds))
    if "zero-shot" in wanted:
        def zero_shot() -> VariantResult:
            return evaluate_model(TapperModel(copy_backbone(backbone), zero_shot_config(tcfg)), target,
                                  "zero-shot backbone")
        results.append(runner.get("zero-shot", zero_shot))

    tuned: Backbone | None = None
    stage1_seconds = 0.0

    def get_tuned() -> Backbone:
        nonlocal tuned, stage1_seconds
        if tuned is None:
            began = time.perf_counter()
            tuned = stage1(copy_backbone(backbone), others, tcfg, cfg, stage1_dir)  # merges in place
            stage1_seconds = time.perf_counter() - began
        return tuned

    if "task-lora" in wanted:
        def task_lora() -> VariantResult:
            t = get_tuned()
            return evaluate_model(TapperModel(copy_backbone(t), zero_shot_config(tcfg)), target,
                                  "task LoRA (stage 1 only)", train_seconds=stage1_seconds)
        results.append(runner.get("task-lora", task_lora))
    def nonpersonal() -> VariantResult:
        return run_variant("non-personalized, same budget", get_tuned(), target, nonpersonal_config(tcfg), cfg,
                           runs / "nonpersonal", history_inputs=history_inputs)

    if "nonpersonal" in wanted:
        results.append(runner.get("nonpersonal", nonpersonal))
    if "tapper" in wanted:
        results.append(runner.get("tapper", lambda: run_variant("TAP-PER", get_tuned(), target, tcfg, cfg,
                                                                runs / "tapper", history_inputs=history_inputs)))

        def int8_rows() -> VariantResult:
            model = runner.models.pop("tapper", None) or TapperModel.from_pretrained(
                runs / "tapper", backbone=copy_backbone(get_tuned()))
            return score_with_int8_user_state("TAP-PER (int8 user table)", model, target)
        results.append(runner.get("tapper-int8", int8_rows))
    for key, (name, switch) in ABLATIONS.items():
        if key in wanted:
            results.append(runner.get(key, lambda n=name, s=switch, k=key: run_variant(
                n, get_tuned(), target, replace(tcfg, **s), cfg, runs / k, history_inputs=history_inputs)))

    def oppu_base() -> Backbone:
        """OPPU starts from the same-budget non-personalized model: the kept non-personalized result (run
        again when its settings are stale) names the run whose LoRA is merged in."""
        runner.get("nonpersonal", nonpersonal)
        if not (runs / "nonpersonal" / BRIDGE_DIR).is_dir():  # result kept, its saved model gone
            nonpersonal()
        return nonpersonal_backbone(get_tuned(), runs / "nonpersonal")

    def baseline(method: str, own_copy: bool) -> Callable[[], VariantResult]:
        def run() -> VariantResult:
            if method in ("rag", "pag"):  # LaMP's fine-tuned setting: its own task LoRA, trained from zero-shot
                base = copy_backbone(backbone)
            elif method == "oppu":
                base = oppu_base()
            else:
                base = copy_backbone(get_tuned()) if own_copy else get_tuned()
            obj = make_baseline(method, base, task, runs / method, shared,
                                summarizer=backbone if method == "pag" else None, history_inputs=history_inputs)
            began = time.perf_counter()
            if method in ("rag", "pag"):  # stage 1's pairs and recipe, each prompt with its records (kept, resumable)
                tag = fingerprint({**{k: all_settings[k] for k in (*STAGE1_KEYS, "stage1_users")},
                                   "peer": asdict(obj.config)})
                obj.fine_tune(others, runs / f"stage1-{method}-{tag}", tcfg, cfg)
            if method == "perpcs":  # sharers: the non-target users with the longest histories
                sharers = obj.choose_anchors(pool)
                sharer_inputs = (rewrite_history_inputs(backbone, get_task(task), sharers, cfg.max_history_pairs,
                                                        rewrites_cache) if args.rewrite_history else None)
                obj.build_anchors(sharers, sharer_inputs)  # their pairs replay the same kind of inputs
            prep_seconds = time.perf_counter() - began
            r = run_baseline(obj, target)
            r.train_seconds += prep_seconds
            if method in ("rag", "pag"):
                r.name = f"{r.name} (k={obj.config.k}, {obj.config.retriever}, fine-tuned with records)"
            obj.save(runs / method)
            return r
        return run

    for method, own_copy in (("rag", False), ("pag", False), ("oppu", True), ("perpcs", True), ("pplug", True)):
        if method in wanted:
            results.append(runner.get(method, baseline(method, own_copy)))
    if "onboard" in wanted:
        budgets = ([int(b) for b in args.onboard_steps.split(",")] if args.onboard_steps
                   else [cfg.onboard_steps])

        # The known users' stage 2 reads every setting but the onboarding ones. It is kept on disk under their
        # tag, so each result not kept yet costs only its own fits: a rerun that adds a budget runs that one.
        known_tag = fingerprint({**{k: v for k, v in all_settings.items() if k not in ONBOARD_KEYS},
                                 "onboard_users": args.onboard_users})

        def held_out_result(key: str) -> VariantResult:
            cold = key == "onboard-cold"
            return onboard_held_out(get_tuned(), target, tcfg, cfg, runs / "onboard", args.onboard_users,
                                    [] if cold else [int(key.removeprefix("onboard-"))], history_inputs,
                                    known_dir=runs / "onboard" / f"known-{known_tag}", score_cold=cold)[key]
        for key in ["onboard-cold", *(f"onboard-{b}" for b in budgets)]:
            results.append(runner.get(key, lambda key=key: held_out_result(key)))

    # -- report ----------------------------------------------------------------------------------------
    metric_names = METRIC_NAMES[get_task(task).metric]
    primary, higher_better = primary_metric(task)
    rows, data_rows = [], []
    for r in results:
        if is_new_user_result(r.name):
            continue
        ci = bootstrap_ci(task, golds, r.predictions, n=1000, seed=args.seed)
        cells = []
        for name in metric_names:
            cells += [r.metrics[name], f"{ci[name][0]:.3f} - {ci[name][1]:.3f}"]
        rows.append([r.name, *cells, r.per_user_params, round(r.train_seconds), round(r.predict_seconds)])
        data_rows.append({"method": r.name, "metrics": r.metrics, "ci95": ci, "per_user_params": r.per_user_params,
                          "train_seconds": r.train_seconds, "predict_seconds": r.predict_seconds,
                          "examples": {i: r.predictions[i] for i in list(r.predictions)[:5]},
                          # what the model saw, after every cut and template (the first few questions)
                          "prompts": r.prompts})
    columns = ["method"]
    for name in metric_names:
        columns += [name, "95% CI"]
    columns += ["per-user params", "train s", "predict s"]
    direction = "higher" if higher_better else "lower"
    who = "validation" if args.val_users else "target"
    result.tables.append(Table(f"{label}: {len(target.questions)} {who} users, {len(others.questions)} stage-1 "
                               f"users, backbone {backbone.name} ({direction} {primary} is better)", columns, rows))
    result.data.update({
        "task": task, "seed": args.seed, "backbone": backbone.name, "target_users": len(target.questions),
        "stage1_users": len(others.questions), "data": data_info, "model_config": asdict(tcfg),
        "train_config": asdict(cfg), "results": data_rows, "runs": str(runs),
    })
    result.notes += compare(results, task, primary, higher_better, golds, args.seed)
    onboarded = [r for r in results if is_new_user_result(r.name)]
    if onboarded:
        table, notes, rows_data = onboarding_table(results, onboarded, task, primary, higher_better, golds,
                                                   len(target.questions), args.seed)
        result.tables.append(table)
        result.notes += notes
        result.data["onboarding"] = rows_data

    def plot(fig):
        ax = fig.subplots()
        names = [r["method"] for r in data_rows][::-1]
        values = [r["metrics"][primary] for r in data_rows][::-1]
        lows = [v - r["ci95"][primary][0] for v, r in zip(values, data_rows[::-1], strict=True)]
        highs = [r["ci95"][primary][1] - v for v, r in zip(values, data_rows[::-1], strict=True)]
        colors = ["#2a7" if n.startswith("TAP-PER") else "#999" if "floor" in n else "#68c" for n in names]
        ax.barh(names, values, xerr=[lows, highs], color=colors, capsize=3)
        ax.set_xlabel(f"{primary} ({direction} is better), 95% bootstrap CI")
        ax.tick_params(axis="y", labelsize=7)

    result.write_and_print(args.out, plot)


def compare(results: list[VariantResult], task: str, primary: str, higher_better: bool, golds: dict[str, str],
            seed: int) -> list[str]:
    """TAP-PER against each peer on the primary metric, with a paired bootstrap of the difference."""
    by_name = {r.name: r for r in results}
    tap = by_name.get("TAP-PER")
    if tap is None:
        return []
    notes = []
    for r in results:
        if r is tap or "floor" in r.name or is_new_user_result(r.name):
            continue
        low, high = paired_difference_ci(task, primary, golds, tap.predictions, r.predictions, seed)
        diff = tap.metrics[primary] - r.metrics[primary]
        better = diff > 0 if higher_better else diff < 0
        clear = (low > 0 or high < 0)
        verdict = "equal" if diff == 0 else "better" if better else "worse"
        verdict += (" (95% CI of the difference excludes 0)" if clear
                    else " (within noise: the 95% CI of the difference spans 0)")
        notes.append(f"TAP-PER vs {r.name}: {primary} {tap.metrics[primary]:.4f} vs {r.metrics[primary]:.4f}, "
                     f"difference {diff:+.4f} [{low:+.4f}, {high:+.4f}]: {verdict}.")
    return notes


def onboard_held_out(tuned: Backbone, target: LampSplit, tcfg, cfg, run_dir: Path, n_new: int,
                     budgets: list[int], history_inputs: dict[str, str] | None = None,
                     known_dir: Path | None = None, score_cold: bool = True) -> dict[str, VariantResult]:
    """Stage 2 without n_new of the target users (at most half); those arrive later. Scored on them only:
    first as they arrive (no row: the mean row + P_q from their history, no training at all), then once per
    fit budget, after each is onboarded one P_u row (P_q, bridge and every other user frozen) fitted for
    that many steps from the mean row of the known users; train_seconds is the onboarding time per user.
    Keys: "onboard-cold" (unless not score_cold) and "onboard-<steps>". With known_dir, the known users' model
    is saved there after stage 2 and loaded from there on a later call instead of being trained again."""
    import torch

    users = sorted({q.user_id for q in target.questions})
    random.Random(cfg.seed).shuffle(users)
    known_users = set(users[min(n_new, len(users) // 2):])
    known = LampSplit(target.task, [q for q in target.questions if q.user_id in known_users], target.golds)
    new = _subset([q for q in target.questions if q.user_id not in known_users], target.golds or {}, target.task)
    torch.manual_seed(cfg.seed)
    if known_dir is not None and (known_dir / CONFIG_NAME).exists():
        print(f"[onboard] reusing the known users' stage 2 from {known_dir}", flush=True)
        model = TapperModel.from_pretrained(known_dir, backbone=copy_backbone(tuned))
        builder = builder_for(model, tcfg, history_inputs)
    else:
        model = TapperModel(copy_backbone(tuned), tcfg, sorted(known_users))
        builder = builder_for(model, tcfg, history_inputs)
        train_prefixes(model, history_examples(builder, known, cfg.max_history_pairs), cfg, run_dir)
        if known_dir is not None:  # whole or not at all: the config file is what marks it usable
            atomic_replace_dir(known_dir, model.save_pretrained)
    out = {}
    if score_cold:
        out["onboard-cold"] = evaluate_model(model, new, COLD)
    start = model.user_state.mean_row()  # of the known users: every budget starts from the same row
    for steps in budgets:
        began = time.perf_counter()
        for q in new.questions:
            onboard_user(model, q.user_id, q.profile, cfg, builder, steps=steps, start=start)
        per_user = (time.perf_counter() - began) / max(1, len(new.questions))
        out[f"onboard-{steps}"] = evaluate_model(model, new, onboarded_name(steps), train_seconds=per_user)
    return out


def onboarding_table(results: list[VariantResult], new_users: list[VariantResult], task: str, primary: str,
                     higher_better: bool, golds: dict[str, str], n_target: int, seed: int
                     ) -> tuple[Table, list[str], list[dict]]:
    """The held-out users scored by every method that answered them, with training seconds per user."""
    ids = sorted(new_users[0].predictions)
    sub = {i: golds[i] for i in ids}
    by_name = {r.name: r for r in results}
    per_user_seconds = {r.name: (r.train_seconds, "no training: mean row + P_q from the history" if r.name == COLD
                                 else "P_u fit, shared parts frozen") for r in new_users}
    if "OPPU" in by_name:
        per_user_seconds["OPPU"] = (by_name["OPPU"].train_seconds / n_target, "own LoRA")
    if "TAP-PER" in by_name:
        per_user_seconds["TAP-PER"] = (by_name["TAP-PER"].train_seconds / n_target, "joint stage 2, amortised")
    if "task LoRA (stage 1 only)" in by_name:
        per_user_seconds["task LoRA (stage 1 only)"] = (0.0, "nothing per user")
    rows, data = [], []
    for name, (seconds, how) in per_user_seconds.items():
        r = by_name[name]
        preds = {i: r.predictions[i] for i in ids}
        value = evaluate(task, sub, preds)[primary]
        low, high = bootstrap_ci(task, sub, preds, n=1000, seed=seed)[primary]
        rows.append([name, how, value, f"{low:.3f} - {high:.3f}", seconds])
        data.append({"method": name, primary: value, "ci95": [low, high], "train_seconds_per_user": seconds})
    table = Table(f"Onboarding: the {len(ids)} target users held out of stage 2", ["method", "how", primary,
                  "95% CI", "train s / user"], rows, align_left=2)
    notes = []
    if "OPPU" in per_user_seconds:
        oppu_seconds = per_user_seconds["OPPU"][0]
        oppu_value = next(d[primary] for d in data if d["method"] == "OPPU")
        for d in data:
            if not is_new_user_result(d["method"]):
                continue
            seconds, value = d["train_seconds_per_user"], d[primary]
            at_least = value >= oppu_value if higher_better else value <= oppu_value
            speed = f"{oppu_seconds / seconds:.2f}x faster" if seconds > 0 else "no training step at all"
            met = (seconds == 0 or oppu_seconds / seconds >= 5) and at_least
            notes.append(f"Onboarding, {d['method']}: {seconds:.1f} s per new user vs OPPU's {oppu_seconds:.1f} s "
                         f"({speed}); {primary} on those users {value:.4f} vs OPPU {oppu_value:.4f} "
                         f"({'equal or better' if at_least else 'worse'}). Target (>= 5x faster to equal or "
                         f"better quality): {'met' if met else 'missed'}.")
    return table, notes, data


def paired_difference_ci(task: str, metric: str, golds: dict[str, str], a: dict[str, str], b: dict[str, str],
                         seed: int, n: int = 1000) -> tuple[float, float]:
    """Percentile bootstrap of metric(a) - metric(b), resampling the same questions for both. Valid for the
    primary metrics (accuracy, MAE, ROUGE), which are means of per-question scores."""
    import numpy as np

    if metric not in ("accuracy", "mae", "rouge-1", "rouge-L"):
        raise ValueError(f"{metric} is not a mean of per-question scores")
    ids = sorted(golds)

    def per_question(preds: dict[str, str]) -> np.ndarray:
        return np.array([evaluate(task, {q: golds[q]}, {q: preds[q]})[metric] for q in ids])

    diff = per_question(a) - per_question(b)
    rng = np.random.default_rng(seed)
    means = [diff[rng.integers(0, len(ids), len(ids))].mean() for _ in range(n)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


if __name__ == "__main__":
    main()
