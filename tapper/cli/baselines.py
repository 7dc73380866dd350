"""`tapper baseline {nonpersonal,rag,pag,oppu,perpcs,pplug}`: fit a peer on the target users' histories, answer
their questions, write LaMP-format predictions (and scores when golds are given) plus the method's state.

Each peer is set up as `tapper compare` / bench/quality.py sets it up: RAG and PAG, given other users
(--stage1-questions), fine-tune their own task LoRA from the zero-shot backbone with the records in every
prompt (LaMP's fine-tuned setting); OPPU starts from the same-budget non-personalized model (`nonpersonal`:
stage 1 plus the LoRA trained on the target histories without prefixes), trained first into OUT/nonpersonal
unless --nonpersonal-run names one, or from the task model alone with --from-task-model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option

baseline_app = typer.Typer(no_args_is_help=True, help="The peers TAP-PER is compared with, on the same harness.")

DESCRIPTIONS = {
    "nonpersonal": "Non-personalized control: TAP-PER's bridge LoRA trained on the same history pairs for the same "
                   "steps, no prefixes (the same-budget control). --set takes TAP-PER's model/train keys.",
    "rag": "RAG: top-k history records (default k=4, BM25) written into the prompt of the task-tuned backbone.",
    "pag": "PAG: RAG plus a cached per-user profile summary written by the untuned backbone.",
    "oppu": "OPPU: one LoRA per user (r=8 on q and v) from the non-personalized model, one file per user.",
    "perpcs": "PER-PCS: per-user adapters assembled from anchor users' LoRA pieces by trained gates.",
    "pplug": "PPlug: MiniLM-embedded history pooled by input-aware attention into one soft token.",
}


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def config_classes(method: str) -> tuple[type, ...]:
    """The dataclasses a method's `--set` keys are fields of (their types parse the values)."""
    if method == "nonpersonal":
        from tapper.prefix.config import TapperConfig
        from tapper.train import TrainConfig

        return TapperConfig, TrainConfig
    from tapper.baselines.registry import config_class

    return (config_class(method),)


def _read(questions: Path, outputs: Path | None, task: str):
    from tapper.data.lamp_io import LampFormatError, read_split

    try:
        return read_split(questions, outputs, task=task)
    except (LampFormatError, OSError) as e:
        _fail(str(e))


def run_command(
    method: str, task: str, questions: Path, out: Path, outputs: Path | None, model: str, device: str,
    task_adapter: Path | None, stage1_questions: Path | None, stage1_outputs: Path | None,
    anchor_questions: Path | None, max_users: int | None, batch_size: int, set_: list[str] | None,
    nonpersonal_run: Path | None = None, from_task_model: bool = False, threads: int = 0, dtype: str = "auto",
    summarizer: str | None = None,
) -> None:
    from tapper.backbone import load_backbone
    from tapper.baselines.common import nonpersonal_backbone, run_baseline, task_tuned_backbone
    from tapper.baselines.registry import make_baseline
    from tapper.data.records import LampSplit
    from tapper.data.tasks import get_task
    from tapper.precision import count_params, dtype_name, resolve_dtype, set_default_dtype, set_threads
    from tapper.settings import SettingError, parse_overrides

    try:
        task = get_task(task).name
    except KeyError as e:
        _fail(str(e.args[0]))
    try:  # before any model loads: a typo in --set costs nothing
        overrides = parse_overrides(set_, config_classes(method))
    except SettingError as e:
        _fail(f"--set: {e}")
    if method != "oppu" and (nonpersonal_run is not None or from_task_model):
        _fail("--nonpersonal-run and --from-task-model are for oppu only")
    if nonpersonal_run is not None and from_task_model:
        _fail("--nonpersonal-run and --from-task-model exclude each other")
    if summarizer is not None and method != "pag":
        _fail("--summarizer is for pag only")
    device = _torchrun_device(method, device, stage1_questions, nonpersonal_run, from_task_model)
    target = _read(questions, outputs, task)
    if max_users:
        target = LampSplit(target.task, target.questions[:max_users],
                           None if target.golds is None else {q.id: target.golds[q.id]
                                                              for q in target.questions[:max_users]})
    stage1 = None
    if stage1_questions is not None:
        if stage1_outputs is None:
            _fail("--stage1-questions needs --stage1-outputs (the task LoRA trains on gold outputs)")
        stage1 = _read(stage1_questions, stage1_outputs, task)
    if task_adapter is None and stage1 is None:
        typer.echo("warning: no --task-adapter or --stage1-questions: the peer runs on the zero-shot backbone",
                   err=True)
    anchors = None
    if anchor_questions is not None and method != "perpcs":
        _fail("--anchor-questions is for perpcs only")
    if method == "perpcs":
        anchors = _read(anchor_questions, None, task) if anchor_questions is not None else stage1
        if anchors is None:
            _fail("perpcs needs anchor users: --anchor-questions, or --stage1-questions (other users)")

    out.mkdir(parents=True, exist_ok=True)
    try:
        resolve_dtype(dtype)
    except ValueError as e:
        _fail(f"--dtype: {e}")
    backbone = load_backbone(model, device=device)
    set_threads(threads, backbone.model)
    # The peers' training loops run in this precision (each loop holds the frozen weights in bf16 and restores
    # them after, so adapters are merged into float32); their generation stays float32.
    set_default_dtype(dtype_name(resolve_dtype(dtype, device, count_params(backbone.model))))
    if method == "nonpersonal":
        result = _nonpersonal(backbone, task, target, out, stage1, task_adapter, overrides)
        _report(result, task, target, out)
        return
    fine_tuned = method in ("rag", "pag") and stage1 is not None
    # RAG/PAG with other users: their own task LoRA from the zero-shot backbone (LaMP's fine-tuned setting)
    tuned = backbone if fine_tuned else task_tuned_backbone(backbone, task, out, stage1, task_adapter)
    if method == "oppu" and not from_task_model:
        if nonpersonal_run is None:
            typer.echo("oppu: training the same-budget non-personalized model first (into OUT/nonpersonal; "
                       "--nonpersonal-run reuses one, --from-task-model skips it)", err=True)
            _nonpersonal(backbone, task, target, out / "nonpersonal", None, None, {}, tuned=tuned)
            nonpersonal_run = out / "nonpersonal"
        try:
            tuned = nonpersonal_backbone(tuned, nonpersonal_run)
        except FileNotFoundError as e:
            _fail(str(e))
    try:
        method_obj = make_baseline(method, copy_backbone_if(fine_tuned, tuned), task, out, overrides,
                                   summarizer=_summarizer(method, summarizer, backbone, device))
    except (KeyError, ValueError) as e:
        _fail(str(e.args[0]) if e.args else str(e))
    if fine_tuned:
        from tapper.train import resolve_configs

        tcfg, cfg = resolve_configs(task, {"backbone": backbone.name,
                                           "max_input_tokens": method_obj.config.max_input_tokens,
                                           "max_answer_tokens": method_obj.config.max_answer_tokens},
                                    {"seed": method_obj.config.seed, "batch_size": method_obj.config.batch_size})
        method_obj.fine_tune(stage1, out / f"stage1-{method}", tcfg, cfg, target)  # target: fine_tune_on_targets
    if anchors is not None:
        method_obj.build_anchors(anchors)
    sharded = _sharded()
    result = _fit_sharded(method_obj, target, batch_size) if sharded else run_baseline(method_obj, target, batch_size)
    if result is None:
        return  # under torchrun rank 0 predicts and writes for all
    if fine_tuned:
        result.name = f"{result.name} (k={method_obj.config.k}, {method_obj.config.retriever}, fine-tuned with records)"
    method_obj.save(out)
    _report(result, task, target, out)


def _sharded() -> bool:
    from tapper import distributed

    return distributed.active()


def _torchrun_device(method: str, device: str, stage1_questions, nonpersonal_run, from_task_model: bool) -> str:
    """Under torchrun only OPPU runs, its users' fits sharded across the ranks (tapper.distributed); what it
    starts from must already exist, so that no rank trains anything else."""
    from tapper import distributed

    if distributed.env_world()[1] <= 1:
        return device
    if method != "oppu" or stage1_questions is not None or (nonpersonal_run is None and not from_task_model):
        _fail("under torchrun only `oppu` runs (its users are sharded across the processes), from models that "
              "exist: give --task-adapter and --nonpersonal-run (or --from-task-model), not --stage1-questions")
    return distributed.init(device)


def _fit_sharded(method_obj, target, batch_size: int):
    """Every rank fits its share of the users; rank 0 then predicts for all (None on the other ranks)."""
    from tapper import distributed
    from tapper.baselines.common import run_baseline
    from tapper.train_loop import TrainingClock

    with TrainingClock() as clock:
        method_obj.fit(target)  # ends at a barrier: every user's file is written
    seconds = clock.seconds
    main = distributed.is_main()
    distributed.teardown()
    if not main:
        return None
    result = run_baseline(method_obj, target, batch_size, fit=False)
    result.train_seconds = seconds
    return result


def copy_backbone_if(needed: bool, backbone):
    """A private copy of the zero-shot backbone for a method that fine-tunes it (the PAG summarizer keeps
    the original)."""
    if not needed:
        return backbone
    from tapper.experiment import copy_backbone

    return copy_backbone(backbone)


def _nonpersonal(backbone, task: str, target, out: Path, stage1, task_adapter: Path | None, overrides: dict,
                 tuned=None):
    """The same-budget non-personalized variant (tapper.experiment.run_variant with nonpersonal_config) on the
    task-tuned backbone; its run (with the LoRA OPPU starts from) is saved in `out`."""
    from tapper.baselines.common import task_tuned_backbone
    from tapper.baselines.nonpersonal import nonpersonal_config
    from tapper.experiment import run_variant
    from tapper.settings import SettingError, split_overrides
    from tapper.train import resolve_configs

    classes = config_classes("nonpersonal")
    try:
        model_over, train_over = split_overrides(overrides, classes)
    except SettingError as e:
        _fail(f"--set: {e}")
    tcfg, cfg = resolve_configs(task, {"backbone": backbone.name, **model_over}, train_over)
    if tuned is None:
        tuned = task_tuned_backbone(backbone, task, out / "stage1", stage1, task_adapter)
    return run_variant("non-personalized, same budget", tuned, target, nonpersonal_config(tcfg), cfg, out)


def _summarizer(method: str, spec: str | None, backbone, device: str):
    """PAG's summarizer: the untuned backbone, or the model --summarizer names."""
    from tapper.backbone import load_backbone

    if method != "pag":
        return None
    return backbone if spec is None else load_backbone(spec, device=device)


def _report(result, task: str, target, out: Path) -> None:
    from tapper.data.lamp_io import write_outputs
    from tapper.io_utils import atomic_write_text

    write_outputs(out / "predictions.json", task, result.predictions)
    report = {"method": result.name, "task": task, "questions": len(target.questions), "metrics": result.metrics,
              "per_user_params": result.per_user_params, "train_seconds": result.train_seconds,
              "predict_seconds": result.predict_seconds}
    atomic_write_text(out / "scores.json", json.dumps(report, indent=2) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) or "no golds given, not scored"
    typer.echo(f"{result.name} on {len(target.questions)} {task} questions: {shown}; wrote {out}/predictions.json")


def _make_command(method: str):
    def command(
        task: Annotated[str, Opt(help="LaMP task, e.g. LaMP_7")],
        questions: Annotated[Path, Opt(help="target users' *_questions.json (their profiles are the history)")],
        out: Annotated[Path, Opt(help="directory for the method's state, predictions.json and scores.json")],
        outputs: Annotated[Path | None, Opt(help="golds for --questions: score the predictions")] = None,
        model: Annotated[str, Opt(help="backbone: default | tiny | HF dir | .gguf file")] = "default",
        device: Annotated[str, Opt()] = "cpu",
        task_adapter: Annotated[Path | None, Opt(help="a trained stage-1 task LoRA, e.g. RUN/task_adapter")] = None,
        stage1_questions: Annotated[Path | None, Opt(help="other users' questions: train the task LoRA")] = None,
        stage1_outputs: Annotated[Path | None, Opt(help="golds for --stage1-questions")] = None,
        anchor_questions: Annotated[Path | None, Opt(help="perpcs only: anchor users (default: stage-1 users)")]
        = None,
        max_users: Annotated[int | None, Opt(help="use the first N target questions")] = None,
        batch_size: Annotated[int, Opt(help="prediction batch size")] = 16,
        set_: Annotated[list[str] | None, Opt("--set", help="method config override key=value (repeatable)")]
        = None,
        nonpersonal_run: Annotated[Path | None, Opt(help="oppu only: start from this `tapper baseline "
                                                         "nonpersonal --out` run instead of training one")] = None,
        from_task_model: Annotated[bool, Opt("--from-task-model", help="oppu only: start from the task model "
                                                                       "alone (OPPU's reference)")] = False,
        threads: Annotated[int, Opt(help="torch CPU threads; 0 = auto: torch's default (one per core), 1 for a "
                                         "model under 10M parameters")] = 0,
        dtype: Annotated[str, Opt(help="auto | fp32 | bf16 for the peer's training loops (auto: bf16 on a CPU "
                                       "with AVX512-BF16/AMX or CUDA, for models of 10M+ parameters)")] = "auto",
        summarizer: Annotated[str | None, Opt(help="pag only: the model that writes the profile summaries (default: "
                                                   "the backbone itself; give an instruction-tuned one, e.g. "
                                                   "default, when --model is a base model)")] = None,
    ) -> None:
        run_command(method, task, questions, out, outputs, model, device, task_adapter, stage1_questions,
                    stage1_outputs, anchor_questions, max_users, batch_size, set_, nonpersonal_run, from_task_model,
                    threads, dtype, summarizer)

    command.__doc__ = DESCRIPTIONS[method]
    return command


for _method in DESCRIPTIONS:
    baseline_app.command(_method)(_make_command(_method))
