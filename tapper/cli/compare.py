"""`tapper compare`: every method on your own LaMP files (or the built-in sample), same harness and settings
as bench/quality.py, resumable; writes quality_<name>.json, .md and .png (tapper.compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _read(questions: Path, outputs: Path | None, task: str | None):
    from tapper.data.lamp_io import LampFormatError, read_split

    try:
        return read_split(questions, outputs, task=task)
    except (LampFormatError, OSError) as e:
        _fail(str(e))


def _numbers(text: str | None, kind: type, option: str) -> list | None:
    if not text:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of {kind.__name__} values",
                                 param_hint=option) from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter("every value must be positive", param_hint=option)
    return values


def data_digest(*splits) -> str:
    """A hash of the users compared (questions, profiles, golds): kept results made from other data are
    never reused, whatever the file names."""
    import hashlib
    import json

    payload = []
    for split in splits:
        payload.append([[q.id, q.user_id, q.input, [[p.id, p.fields, p.day] for p in q.profile]]
                        for q in split.questions])
        payload.append(sorted((split.golds or {}).items()))
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compare_command(
    questions: Annotated[Path | None, Opt(help="target users' *_questions.json: scored; their profiles are the "
                                               "histories every personalized method learns from")] = None,
    outputs: Annotated[Path | None, Opt(help="golds for --questions")] = None,
    train_questions: Annotated[Path | None, Opt(help="other users' *_questions.json: stage 1 (the task LoRA, "
                                                     "RAG/PAG's fine-tuning), PER-PCS's sharers, the floors")]
    = None,
    train_outputs: Annotated[Path | None, Opt(help="golds for --train-questions")] = None,
    task: Annotated[str | None, Opt(help="LaMP task, e.g. LaMP_3 (default: the files'; LaMP_3 with --sample)")]
    = None,
    sample: Annotated[bool, Opt("--sample", help="the built-in sample instead of files (test users as targets, "
                                                 "train users as the others)")] = False,
    methods: Annotated[str, Opt(help="'all' or a comma-separated subset of floors, zero-shot, task-lora, "
                                     "nonpersonal, tapper, rag, pag, oppu, perpcs, pplug, onboard, no-pu, no-pq, "
                                     "no-time, no-bridge, rag-targets, pag-targets ('all': the first eleven)")]
    = "all",
    ablations: Annotated[bool, Opt("--ablations", help="add TAP-PER's four ablations")] = False,
    set_: Annotated[list[str] | None, Opt("--set", help="model or train config override key=value for every "
                                                        "method (repeatable)")] = None,
    out: Annotated[Path, Opt(help="where quality_<name>.json/.md/.png go")] = Path("results"),
    runs: Annotated[Path | None, Opt(help="work dir with the kept results (default runs/compare/<name>)")] = None,
    name: Annotated[str | None, Opt(help="names the result files quality_<name>.* (default: the task)")] = None,
    model: Annotated[str, Opt(help="backbone: default | tiny | HF dir | .gguf file")] = "default",
    device: Annotated[str, Opt()] = "cpu",
    seed: Annotated[int, Opt(help="training seed and bootstrap seed")] = 0,
    max_users: Annotated[int | None, Opt(help="use the first N target questions")] = None,
    onboard_users: Annotated[int, Opt(help="targets held out of stage 2 and onboarded later (at most half)")] = 10,
    onboard_steps: Annotated[str | None, Opt(help="comma-separated P_u fit budgets (default: onboard_steps)")]
    = None,
    onboard_lrs: Annotated[str | None, Opt(help="comma-separated P_u fit learning rates, e.g. 1e-3,3e-3,1e-2; "
                                                "every (rate, budget) is its own result")] = None,
    rewrite_history: Annotated[bool, Opt("--rewrite-history", help="LaMP-7: replay history tweets from "
                                                                   "filtered backbone rewrites")] = False,
    val_latest: Annotated[bool, Opt("--val-latest", help="score the targets on their latest history item, held "
                                                         "out of their history, instead of their query: choose "
                                                         "settings without the real queries")] = False,
    pag_summarizer: Annotated[str | None, Opt(help="the model that writes PAG's profile summaries (default: the "
                                                   "backbone itself); an instruction-tuned one, e.g. default, "
                                                   "when --model is a base model")] = None,
    fresh: Annotated[bool, Opt("--fresh", help="ignore results kept from an earlier run")] = False,
    threads: Annotated[int | None, Opt(help="torch CPU threads (default: torch's choice)")] = None,
) -> None:
    """Compare every method on one task: floors, zero-shot, task LoRA, non-personalized, TAP-PER (+ablations),
    RAG, PAG, OPPU, PER-PCS, PPlug, onboarding. Rerun the same command after a kill: kept results are reused."""
    from tapper.compare import CompareSpec, NothingToTrain, parse_methods, run_comparison
    from tapper.data.records import LampSplit
    from tapper.data.tasks import get_task
    from tapper.prefix.config import TapperConfig
    from tapper.settings import SettingError, parse_overrides, split_overrides
    from tapper.train import TrainConfig

    try:
        wanted = parse_methods(methods, ablations)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--methods") from None
    try:  # before any data or model loads: a typo in --set costs nothing
        model_over, train_over = split_overrides(parse_overrides(set_, (TapperConfig, TrainConfig)),
                                                 (TapperConfig, TrainConfig))
    except SettingError as e:
        raise typer.BadParameter(str(e), param_hint="--set") from None
    steps = _numbers(onboard_steps, int, "--onboard-steps")
    lrs = _numbers(onboard_lrs, float, "--onboard-lrs")
    if task is not None:
        try:
            task = get_task(task).name
        except KeyError as e:
            _fail(str(e.args[0]))

    if sample:
        if questions or train_questions:
            _fail("--sample takes no --questions / --train-questions")
        from tapper.data.sample import load_sample

        if task not in (None, "LaMP_3"):
            _fail(f"the built-in sample is LaMP_3, not {task}")
        splits = load_sample()
        target, others, task = splits["test"], splits["train"], "LaMP_3"
        info = {"source": "tapper built-in sample (tapper/data/sample)"}
    else:
        if questions is None or outputs is None:
            _fail("give the targets (--questions and --outputs) and the other users (--train-questions and "
                  "--train-outputs), or --sample")
        if train_questions is None or train_outputs is None:
            _fail("--train-questions and --train-outputs (other users with golds) are needed: stage 1 trains on them")
        target = _read(questions, outputs, task)
        task = task or target.task
        others = _read(train_questions, train_outputs, task)
        info = {"source": str(questions), "stage1_source": str(train_questions)}
    if max_users:
        kept = target.questions[:max_users]
        target = LampSplit(target.task, kept, {q.id: target.golds[q.id] for q in kept})
    overlap = {q.user_id for q in target.questions} & {q.user_id for q in others.questions}
    if overlap:
        _fail(f"{len(overlap)} user(s) are both targets and stage-1 users (e.g. {sorted(overlap)[0]!r}): stage 1 "
              "must be trained on other users")
    if threads:
        import torch

        torch.set_num_threads(threads)
    label = name or task
    spec = CompareSpec(task=task, target=target, others=others, label=label, data_info=info,
                       data_settings={"data": data_digest(target, others)}, methods=wanted, backbone=model,
                       device=device, seed=seed, model_overrides=model_over, train_overrides=train_over,
                       rewrite_history=rewrite_history, pag_summarizer=pag_summarizer, onboard_users=onboard_users,
                       onboard_steps=steps, onboard_lrs=lrs, val_latest=val_latest, fresh=fresh)
    try:
        report = run_comparison(spec, runs or Path("runs") / "compare" / label)
    except NothingToTrain as e:
        _fail(str(e))
    for path in report.write(out):
        typer.echo(f"wrote {path}")
    typer.echo(report.text())
