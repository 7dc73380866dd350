"""Every method on one task, on the same users, backbone, settings and metric: the wiring of each method
(what it trains on, what it starts from), onboarding of held-out users, and the report.

The caller chooses the users (a `CompareSpec`): `tapper compare` from the user's own LaMP files,
bench/quality.py from this repository's data. Stage 1 (the task LoRA on the other users) is trained once and
shared; every result is kept in the runs folder as it finishes (see runner.Runner).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tapper.backbone import Backbone, load_backbone
from tapper.baselines.common import RECIPE_KEYS, nonpersonal_backbone, run_baseline
from tapper.baselines.floors import floors
from tapper.baselines.nonpersonal import nonpersonal_config, zero_shot_config
from tapper.baselines.registry import make_baseline
from tapper.compare.report import (
    COLD,
    Report,
    Table,
    bar_plot,
    compare_notes,
    is_new_user_result,
    main_columns,
    main_rows,
    onboarded_name,
    onboarding_table,
)
from tapper.compare.runner import ONBOARD_KEYS, PEER_VARIANTS, STAGE1_KEYS, Runner, fingerprint
from tapper.data.records import LampSplit, Question
from tapper.data.tasks import get_task
from tapper.errors import TapperError
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
from tapper.io_utils import atomic_replace_dir
from tapper.metrics import METRIC_NAMES, evaluate
from tapper.prefix.model import BRIDGE_DIR, CONFIG_NAME, TapperModel
from tapper.train import builder_for, history_examples, onboard_users, resolve_configs, train_prefixes
from tapper.train_loop import ROW_SPARSE_OPTIMIZER, TrainingClock

CORE = ["floors", "zero-shot", "task-lora", "nonpersonal", "tapper", "rag", "pag", "oppu", "perpcs", "pplug",
        "onboard"]
ABLATIONS = {
    "no-pu": ("TAP-PER without P_u", {"use_user_state": False}),
    "no-pq": ("TAP-PER without P_q", {"use_query_prefix": False}),
    "no-time": ("TAP-PER without time decay", {"use_time_decay": False}),
    "no-bridge": ("TAP-PER without the bridge", {"use_bridge": False}),
}
METHOD_HELP = {
    "floors": "naive predictions that need no model (the task's standard floors)",
    "zero-shot": "the backbone as it is",
    "task-lora": "stage 1 alone: the task LoRA trained on the other users",
    "nonpersonal": "the same LoRA as TAP-PER's bridge, trained on the same histories for the same steps, no prefixes",
    "tapper": "TAP-PER (and its int8 user table)",
    "rag": "LaMP's RAG, fine-tuned setting (k=4): its own task LoRA with the records in every prompt",
    "pag": "RAG plus one profile summary per user",
    "oppu": "one LoRA per user, from the non-personalized model",
    "perpcs": "per-user adapters assembled from sharers' LoRA pieces",
    "pplug": "one soft token from a MiniLM embedding of the history",
    "onboard": "held-out targets onboarded later: no fit, then one P_u fit per budget (and rate)",
    "rag-targets": "RAG fine-tuned on the target users' history pairs too (each with its earlier records)",
    "pag-targets": "PAG fine-tuned on the target users' history pairs too (each with its summary and records)",
}


def parse_methods(methods: str | Sequence[str], ablations: bool = False) -> list[str]:
    """"all" or a comma-separated subset of CORE, ABLATIONS and PEER_VARIANTS (ValueError naming the unknown
    ones); `ablations` adds the four ablations. "all" is CORE: the ablations and variants are asked for."""
    wanted = list(CORE) if methods == "all" else (
        [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods))
    known = CORE + list(ABLATIONS) + list(PEER_VARIANTS)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(known)}")
    if ablations:
        wanted += [a for a in ABLATIONS if a not in wanted]
    return wanted


@dataclass
class CompareSpec:
    """What to compare on. `target`: the users scored (their profiles are the histories every personalized
    method learns from); `others`: stage 1's users (other users with gold answers); `pool`: every non-target
    user (PER-PCS picks its sharers there; default `others`). `label` names the result files
    (quality_<label>.*). `data_settings` are the settings that chose the users (e.g. stage1_users,
    min_profile; for files: a hash of their content): they are part of every kept result's tag."""

    task: str
    target: LampSplit
    others: LampSplit
    pool: LampSplit | None = None
    label: str | None = None
    data_info: dict = field(default_factory=dict)
    data_settings: dict = field(default_factory=dict)
    methods: Sequence[str] = tuple(CORE)
    backbone: str = "default"
    device: str = "cpu"
    seed: int = 0
    model_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    rewrite_history: bool = False  # LaMP-7: replay history tweets from filtered backbone rewrites
    # PAG's summarizer, a backbone spec (None: the backbone itself, untuned). The paper's is an instruction-tuned
    # LLM; a base backbone (Gemma 3 270M) continues the record list instead of describing the user.
    pag_summarizer: str | None = None
    onboard_users: int = 10
    onboard_steps: Sequence[int] | None = None  # P_u fit budgets (default: the config's onboard_steps)
    onboard_lrs: Sequence[float] | None = None  # a grid of fit learning rates (default: the config's onboard_lr)
    val_users: int = 0  # > 0: the targets are validation users; results under <runs>/val<K>-<tag>, *_val files
    # True: score the targets on their latest history item instead of their query, that item removed from
    # their history (hold_out_latest): validation for tasks with no spare users; <runs>/val-latest-<tag>
    val_latest: bool = False
    fresh: bool = False  # ignore kept results


class NothingToTrain(RuntimeError):
    """The comparison cannot run as asked (e.g. no history rewrite passed the filter)."""


class HoldOutError(TapperError, ValueError):
    """A target user's latest history item cannot become a validation question."""


def onboard_key(steps: int, lr: float | None = None) -> str:
    return f"onboard-{steps}" if lr is None else f"onboard-{steps}-lr{lr:g}"


def _subset(questions: list[Question], golds: dict[str, str], task: str) -> LampSplit:
    return LampSplit(task, questions, {q.id: golds[q.id] for q in questions})


def hold_out_latest(split: LampSplit) -> LampSplit:
    """Each user's latest history item becomes their question (the pair it would have been as a query, its
    label the gold) and leaves their history. Settings chosen on this split never see the real queries, and
    stage 1 (other users) stays the same, so tasks whose every eligible user is a target can still be tuned."""
    task = get_task(split.task)
    questions, golds = [], {}
    for q in split.questions:
        if len(q.profile) < 2:
            raise HoldOutError(f"hold_out_latest: user {q.user_id!r} (question {q.id!r}) has {len(q.profile)} "
                             "history item(s); holding one out needs at least 2")
        item = q.profile[-1]  # profiles are ordered by (day, position)
        pair = task.history_pair(item)
        if pair is None:
            raise HoldOutError(f"hold_out_latest: history item {item.id!r} of user {q.user_id!r} has no "
                             f"{task.name} input/output pair (field {task.history_output_field!r})")
        held = Question(id=f"{q.id}@{item.id}", input=pair[0], profile=q.profile[:-1], user_id=q.user_id,
                        day=item.day)
        questions.append(held)
        golds[held.id] = pair[1]
    return LampSplit(split.task, questions, golds)


def run_comparison(spec: CompareSpec, runs: Path) -> Report:
    """Run (or reuse) every method of `spec` with its work kept under `runs`, and return the report."""
    task = get_task(spec.task).name
    wanted = list(spec.methods)
    parse_methods(wanted)  # unknown names fail before anything runs
    target, others = spec.target, spec.others
    if spec.val_users and spec.val_latest:
        raise HoldOutError("val_users and val_latest are two different validation sets: choose one")
    if spec.val_latest:
        target = hold_out_latest(target)
    pool = spec.pool if spec.pool is not None else others
    data_info = dict(spec.data_info)
    label = spec.label or task
    runs = Path(runs)
    report = Report(f"quality_{label}", f"Quality on {label}: every method, same backbone and users", {})

    golds = target.golds or {}
    tcfg, cfg = resolve_configs(task, {"backbone": spec.backbone, **spec.model_overrides},
                                {"seed": spec.seed, **spec.train_overrides})
    # the peers' harness settings come from the same resolved configs, so --set reaches every method
    shared = {"seed": cfg.seed, "max_history_pairs": cfg.max_history_pairs, "stage2_epochs": cfg.stage2_epochs,
              "batch_size": cfg.batch_size, "max_input_tokens": tcfg.max_input_tokens,
              "max_answer_tokens": tcfg.max_answer_tokens, "constrain_answers": tcfg.constrain_answers,
              **{k: getattr(cfg, k) for k in RECIPE_KEYS}}
    all_settings = {**asdict(tcfg), **asdict(cfg), "rewrite_history": spec.rewrite_history,
                    "user_rows_optimizer": ROW_SPARSE_OPTIMIZER, "pag_summarizer": spec.pag_summarizer,
                    **spec.data_settings}
    all_settings.pop("show_progress")
    stage1_keys = (*STAGE1_KEYS, *spec.data_settings)
    stage1_tag = fingerprint({k: all_settings[k] for k in stage1_keys})
    stage1_dir = runs / f"stage1-{stage1_tag}"
    rewrites_cache = runs / "history_rewrites.json"  # keyed by (backbone, text): one cache for every user set
    sweep_prefix = None  # a validation run keeps one dir per setting of a sweep: <runs>/<prefix><settings tag>
    if spec.val_users:
        all_settings["val_users"] = spec.val_users
        sweep_prefix = f"val{spec.val_users}-"
        runs = runs / f"{sweep_prefix}{fingerprint(all_settings)}"
        report.name += "_val"
        report.title = (f"Quality on {task}, {spec.val_users} validation users (not the targets): "
                        "settings chosen here")
    if spec.val_latest:
        all_settings["val_latest"] = True
        sweep_prefix = "val-latest-"
        runs = runs / f"{sweep_prefix}{fingerprint(all_settings)}"
        report.name += "_val_latest"
        report.title = (f"Quality on {task}, the targets' latest history items (their queries unseen): "
                        "settings chosen here")
    # the other points of a validation sweep: a method that reads none of the swept settings runs once
    sweep = [] if sweep_prefix is None else sorted(d for d in runs.parent.glob(f"{sweep_prefix}*") if d.is_dir())
    runner = Runner(runs, spec.fresh, all_settings, shared=sweep,
                    keep_models=["tapper"] if "tapper" in wanted else [])  # read by tapper-int8
    backbone = load_backbone(spec.backbone, device=spec.device)
    history_inputs = None
    if spec.rewrite_history:
        history_inputs = rewrite_history_inputs(backbone, get_task(task), target, cfg.max_history_pairs,
                                                rewrites_cache)
        data_info["rewritten_history_pairs"] = len(history_inputs)
        if not history_inputs:
            raise NothingToTrain(f"rewrite_history: no rewrite by {backbone.name} passed the overlap filter "
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
            with TrainingClock() as clock:
                tuned = stage1(copy_backbone(backbone), others, tcfg, cfg, stage1_dir)  # merges in place
            stage1_seconds = clock.seconds
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

    def pag_summarizer() -> Backbone:
        if spec.pag_summarizer is None:
            return backbone
        return load_backbone(spec.pag_summarizer, device=spec.device)

    def baseline(key: str, own_copy: bool) -> Callable[[], VariantResult]:
        method, options = PEER_VARIANTS.get(key, (key, {}))

        def run() -> VariantResult:
            if method in ("rag", "pag"):  # LaMP's fine-tuned setting: its own task LoRA, trained from zero-shot
                base = copy_backbone(backbone)
            elif method == "oppu":
                base = oppu_base()
            else:
                base = copy_backbone(get_tuned()) if own_copy else get_tuned()
            obj = make_baseline(method, base, task, runs / key, {**shared, **options},
                                summarizer=pag_summarizer() if method == "pag" else None,
                                history_inputs=history_inputs)
            with TrainingClock() as clock:
                if method in ("rag", "pag"):  # stage 1's pairs and recipe, each prompt with its records (resumable)
                    peer = {"peer": asdict(obj.config)}
                    if method == "pag" and spec.pag_summarizer is not None:  # other summaries, other prompts
                        peer["summarizer"] = spec.pag_summarizer
                    tag = fingerprint({**{k: all_settings[k] for k in stage1_keys}, **peer})
                    # the targets' pairs, when read, are in the adapter's stamp (it hashes every training pair)
                    obj.fine_tune(others, runs / f"stage1-{key}-{tag}", tcfg, cfg, target)
                if method == "perpcs":  # sharers: the non-target users with the longest histories
                    sharers = obj.choose_anchors(pool)
                    sharer_inputs = (rewrite_history_inputs(backbone, get_task(task), sharers, cfg.max_history_pairs,
                                                            rewrites_cache) if spec.rewrite_history else None)
                    obj.build_anchors(sharers, sharer_inputs)  # their pairs replay the same kind of inputs
            prep_seconds = clock.seconds
            r = run_baseline(obj, target)
            r.train_seconds += prep_seconds
            if method in ("rag", "pag"):
                name, pairs = (f"{r.name}+targets", " and the targets' history pairs") \
                    if obj.config.fine_tune_on_targets else (r.name, "")
                r.name = f"{name} (k={obj.config.k}, {obj.config.retriever}, fine-tuned with records{pairs})"
            obj.save(runs / key)
            return r
        return run

    for key, own_copy in (("rag", False), ("pag", False), *((variant, False) for variant in PEER_VARIANTS),
                          ("oppu", True), ("perpcs", True), ("pplug", True)):
        if key in wanted:
            results.append(runner.get(key, baseline(key, own_copy)))
    if "onboard" in wanted:
        budgets = [int(b) for b in spec.onboard_steps] if spec.onboard_steps else [cfg.onboard_steps]
        rates: list[float | None] = [float(lr) for lr in spec.onboard_lrs] if spec.onboard_lrs else [None]
        fits = {onboard_key(steps, lr): (steps, lr) for lr in rates for steps in budgets}

        # The known users' stage 2 reads every setting but the onboarding ones. It is kept on disk under their
        # tag, so each result not kept yet costs only its own fits: a rerun that adds a budget runs that one.
        known_tag = fingerprint({**{k: v for k, v in all_settings.items() if k not in ONBOARD_KEYS},
                                 "onboard_users": spec.onboard_users})

        def held_out_result(key: str) -> VariantResult:
            cold = key == "onboard-cold"
            return onboard_held_out(get_tuned(), target, tcfg, cfg, runs / "onboard", spec.onboard_users,
                                    [] if cold else [fits[key]], history_inputs,
                                    known_dir=runs / "onboard" / f"known-{known_tag}", score_cold=cold)[key]
        for key in ["onboard-cold", *fits]:
            results.append(runner.get(key, lambda key=key: held_out_result(key)))

    report.data["kept_results_reused"] = list(runner.reused)
    return build_report(report, results, task, label, target, others, backbone.name, spec, tcfg, cfg, data_info,
                        runs)


def build_report(report: Report, results: list[VariantResult], task: str, label: str, target: LampSplit,
                 others: LampSplit, backbone_name: str, spec: CompareSpec, tcfg, cfg, data_info: dict,
                 runs: Path) -> Report:
    """The main table (every method on every target user, 95% CIs), TAP-PER against each peer, the onboarding
    table when users were held out, the JSON data and the plot."""
    golds = target.golds or {}
    metric_names = METRIC_NAMES[get_task(task).metric]
    primary, higher_better = primary_metric(task)
    rows, data_rows = main_rows(results, task, metric_names, golds, spec.seed)
    direction = "higher" if higher_better else "lower"
    who = ("validation users" if spec.val_users else
           "target users scored on their latest history item" if spec.val_latest else "target users")
    report.tables.append(Table(f"{label}: {len(target.questions)} {who}, {len(others.questions)} stage-1 "
                               f"users, backbone {backbone_name} ({direction} {primary} is better)",
                               main_columns(metric_names), rows))
    report.data.update({
        "task": task, "seed": spec.seed, "backbone": backbone_name, "target_users": len(target.questions),
        "stage1_users": len(others.questions), "data": data_info, "model_config": asdict(tcfg),
        "train_config": asdict(cfg), "results": data_rows, "runs": str(runs),
        "pag_summarizer": spec.pag_summarizer or backbone_name,
    })
    report.notes += compare_notes(results, task, primary, higher_better, golds, spec.seed)
    onboarded = [r for r in results if is_new_user_result(r.name)]
    if onboarded:
        table, notes, rows_data = onboarding_table(results, onboarded, task, primary, higher_better, golds,
                                                   len(target.questions), spec.seed)
        report.tables.append(table)
        report.notes += notes
        report.data["onboarding"] = rows_data
    report.plot = bar_plot(data_rows, primary, direction)
    report.task, report.answers = task, {r.name: dict(r.predictions) for r in results}
    return report


def onboard_held_out(tuned: Backbone, target: LampSplit, tcfg, cfg, run_dir: Path, n_new: int,
                     fits: Sequence[int | tuple[int, float | None]], history_inputs: dict[str, str] | None = None,
                     known_dir: Path | None = None, score_cold: bool = True) -> dict[str, VariantResult]:
    """Stage 2 without n_new of the target users (at most half); those arrive later. Scored on them only:
    first as they arrive (no row: the mean row + P_q from their history, no training at all), then once per
    fit, after each is onboarded one P_u row (P_q, bridge and every other user frozen) fitted from the mean
    row of the known users; train_seconds is the onboarding time per user. A fit is a step budget, or
    (steps, learning rate) with the rate None for the config's onboard_lr.
    Keys: "onboard-cold" (unless not score_cold), "onboard-<steps>" and "onboard-<steps>-lr<lr>". With
    known_dir, the known users' model is saved there after stage 2 and loaded from there on a later call
    instead of being trained again."""
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
    start = model.user_state.mean_row()  # of the known users: every fit starts from the same row
    for fit in fits:
        steps, lr = (fit, None) if isinstance(fit, int) else fit
        fit_cfg = cfg if lr is None else replace(cfg, onboard_lr=lr)
        began = time.perf_counter()
        onboard_users(model, new.questions, fit_cfg, builder, steps=steps, start=start)
        per_user = (time.perf_counter() - began) / max(1, len(new.questions))
        out[onboard_key(steps, lr)] = evaluate_model(model, new, onboarded_name(steps, lr), train_seconds=per_user)
    return out
