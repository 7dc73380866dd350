"""`tapper baseline {rag,pag,oppu,perpcs,pplug}`: fit a peer on the target users' histories, answer their
questions, write LaMP-format predictions (and scores when golds are given) plus the method's state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option

baseline_app = typer.Typer(no_args_is_help=True, help="The peers TAP-PER is compared with, on the same harness.")

DESCRIPTIONS = {
    "rag": "RAG: top-k history records (default k=4, BM25) written into the prompt of the task-tuned backbone.",
    "pag": "PAG: RAG plus a cached per-user profile summary written by the untuned backbone.",
    "oppu": "OPPU: one LoRA per user (r=8 on q and v) on top of the task LoRA, one file per user.",
    "perpcs": "PER-PCS: per-user adapters assembled from anchor users' LoRA pieces by trained gates.",
    "pplug": "PPlug: MiniLM-embedded history pooled by input-aware attention into one soft token.",
}


def register(app: typer.Typer) -> None:
    app.add_typer(baseline_app, name="baseline")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def config_class(method: str) -> type:
    """The dataclass a method's `--set` keys are fields of (their types parse the values)."""
    from tapper.baselines.oppu import OppuConfig
    from tapper.baselines.pag import PagConfig
    from tapper.baselines.perpcs import PerPcsConfig
    from tapper.baselines.pplug import PPlugConfig
    from tapper.baselines.rag import RagConfig

    return {"rag": RagConfig, "pag": PagConfig, "oppu": OppuConfig, "perpcs": PerPcsConfig,
            "pplug": PPlugConfig}[method]


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
) -> None:
    from tapper.backbone import load_backbone
    from tapper.baselines.common import make_baseline, run_baseline, task_tuned_backbone
    from tapper.data.lamp_io import write_outputs
    from tapper.data.records import LampSplit
    from tapper.data.tasks import get_task
    from tapper.io_utils import atomic_write_text
    from tapper.settings import SettingError, parse_overrides

    try:
        task = get_task(task).name
    except KeyError as e:
        _fail(str(e.args[0]))
    try:  # before any model loads: a typo in --set costs nothing
        overrides = parse_overrides(set_, (config_class(method),))
    except SettingError as e:
        _fail(f"--set: {e}")
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
    backbone = load_backbone(model, device=device)
    tuned = task_tuned_backbone(backbone, task, out, stage1, task_adapter)
    try:
        method_obj = make_baseline(method, tuned, task, out, overrides,
                                   summarizer=backbone if method == "pag" else None)
    except (KeyError, ValueError) as e:
        _fail(str(e.args[0]) if e.args else str(e))
    if anchors is not None:
        method_obj.build_anchors(anchors)
    result = run_baseline(method_obj, target, batch_size)
    method_obj.save(out)
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
    ) -> None:
        run_command(method, task, questions, out, outputs, model, device, task_adapter, stage1_questions,
                    stage1_outputs, anchor_questions, max_users, batch_size, set_)

    command.__doc__ = DESCRIPTIONS[method]
    return command


for _method in DESCRIPTIONS:
    baseline_app.command(_method)(_make_command(_method))
