"""TAP-PER's training recipes: stage 1 (task LoRA, merged), stage 2 (P_u + P_q + bridge), onboarding.

A run directory holds the shared part and the user table apart, so a table can be swapped or grown
without rewriting the shared weights:

    run/tapper_config.json  run/train_config.json  run/backbone.json  run/task_adapter/  run/bridge/
    run/query_prefix.safetensors  run/user_state/{user_state.safetensors,users.json}
    run/checkpoints/{stage1,stage2}/   (resumable; removed when a stage completes)
    run/train_log.jsonl   (every step's loss, one JSON object a line; run/tensorboard/ too if it is installed)
    run/train_summary.json   (written last: the run is finished, and what it was made from)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from tapper import distributed
from tapper.backbone import Backbone, backbone_identity, load_backbone
from tapper.batching import answer_loss
from tapper.data.records import LampSplit, Question
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.io_utils import atomic_replace_dir, atomic_write_text, one_writer
from tapper.log_lines import live_progress
from tapper.lora import add_lora
from tapper.prefix.config import TapperConfig
from tapper.prefix.model import (
    CONFIG_NAME,
    TASK_ADAPTER_DIR,
    TRAIN_CONFIG_NAME,
    TapperModel,
    merge_task_adapter,
    note_task_adapter,
    portable_config,
)
from tapper.train_loop import LoopConfig, LoopResult, token_length, train

log = logging.getLogger(__name__)
LOSS_LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "train_summary.json"
TENSORBOARD_DIR = "tensorboard"
__all__ = ["TRAIN_CONFIG_NAME", "TrainConfig", "resolve_configs", "train_tapper"]


@dataclass
class TrainConfig:
    """How TAP-PER is trained. Per-task defaults live in tapper/configs/<task>.json."""

    seed: int = 0
    batch_size: int = 8
    # Stage 1 follows the reference recipe: several epochs over the other users' questions and their
    # history pairs, 10% warmup, linear decay, clipping (below, shared by every stage).
    stage1_lr: float = 1e-4
    stage1_epochs: float = 3.0
    stage1_max_examples: int | None = None
    stage1_history_pairs: int = 4  # per other user: their latest history pairs join their questions in stage 1
    stage2_lr: float = 1e-3  # P_q and the bridge LoRA
    user_lr: float = 3e-3  # P_u rows (RowAdam: per-row steps and moments)
    stage2_epochs: float = 2.0
    max_history_pairs: int | None = 16  # per user, most recent first
    warmup_ratio: float = 0.1  # every stage: linear warmup over this share of its steps, then linear decay
    weight_decay: float = 0.01  # AdamW's, on the shared weights (never on user rows)
    max_grad_norm: float = 0.3
    # Onboarding fits one row with the row optimizer of stage 2, at the rows' own rate, for about as many
    # updates as a row gets in stage 2 (stage2_epochs x its pairs in one batch each). Per-task values chosen on
    # validation users live in tapper/configs (LaMP-7: 0 steps, no fit: the mean row + P_q did best; LaMP-3: 16
    # steps at 1e-2, by one answer of 20; results/README.md section 2b). 0 serves a new user at once.
    onboard_steps: int = 16
    onboard_lr: float = 3e-3
    checkpoint_every: int = 25
    length_buckets: bool = True  # batches of similar token length (train_loop.batch_order); false: plain shuffle
    # "auto" | "fp32" | "bf16" (tapper.precision): auto is bf16 on a CPU with AVX512-BF16/AMX or on CUDA; trained
    # weights, optimiser states and saved files stay float32 either way.
    dtype: str = "auto"
    show_progress: bool = True

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def task_defaults(task: str) -> tuple[dict, dict]:
    """(model overrides, train overrides) from the task's config file, if it has one."""
    name = f"{get_task(task).name}.json"
    ref = resources.files("tapper.configs") / name
    if not ref.is_file():
        return {}, {}
    data = json.loads(ref.read_text(encoding="utf-8"))
    return data.get("model", {}), data.get("train", {})


def resolve_configs(task: str, model_overrides: dict | None = None, train_overrides: dict | None = None
                    ) -> tuple[TapperConfig, TrainConfig]:
    """Dataclass defaults < the task's config file < explicit overrides (e.g. from the command line).
    Every value must be of its field's type (tapper.settings.check_settings): a SettingError (ValueError)
    names the key, the value and what it takes."""
    from tapper.settings import check_settings

    model_defaults, train_defaults = task_defaults(task)
    m = {**model_defaults, **(model_overrides or {}), "task": get_task(task).name}
    t = {**train_defaults, **(train_overrides or {})}
    for cls, given in ((TapperConfig, m), (TrainConfig, t)):
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s): {sorted(unknown)}")
        check_settings(cls, given)  # a value of the wrong type (use_bridge="no") is an error naming it
    return TapperConfig(**m), TrainConfig(**t)


def _loop(cfg: TrainConfig, lr: float, epochs: float = 1.0, max_steps: int | None = None) -> LoopConfig:
    return LoopConfig(
        lr=lr, epochs=epochs, max_steps=max_steps, batch_size=cfg.batch_size, seed=cfg.seed,
        weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, decay="linear",
        max_grad_norm=cfg.max_grad_norm, checkpoint_every=cfg.checkpoint_every,
        show_progress=cfg.show_progress and live_progress(), dtype=cfg.dtype, bucket=cfg.length_buckets,
    )


# -- what training says: a per-step loss log, progress lines without a terminal -------------------------------

class StepLog:
    """The training loop's on_step callback for one stage: appends every step's loss to RUN/train_log.jsonl (and
    to TensorBoard when it is installed), notes a resume, and, when no live bar is shown, logs a plain progress
    line every tenth of the stage."""

    def __init__(self, run_dir: Path | None, stage: str, desc: str, show_progress: bool = True):
        self.path = run_dir / LOSS_LOG_NAME if run_dir is not None else None
        self.stage, self.desc = stage, desc
        self.lines = show_progress and not live_progress()
        self.first: float | None = None
        self.last: float | None = None
        self.began = time.perf_counter()
        self._writer = None
        self._started = False

    def __call__(self, step: int, steps: int, loss: float) -> None:
        if not self._started:
            self._start(step, steps)
        if self.first is None:
            self.first = loss
        self.last = loss
        elapsed = time.perf_counter() - self.began
        if self.path is not None:
            entry = {"stage": self.stage, "step": step, "steps": steps, "loss": loss, "seconds": round(elapsed, 3)}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if self._writer is not None:
            self._writer.add_scalar(f"loss/{self.stage}", loss, step)
        if self.lines and (step == steps or step % max(1, steps // 10) == 0):
            log.info("%s: step %d/%d, loss %.4f, %.0f s", self.desc, step, steps, loss, elapsed)

    def _start(self, step: int, steps: int) -> None:
        self._started = True
        if step > 1:
            log.info("%s: resuming from its checkpoint at step %d of %d", self.desc, step - 1, steps)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed or repeated stage replaces its own entries from this step on
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("stage") != self.stage or entry.get("step", 0) < step:
                    kept.append(line + "\n")
            atomic_write_text(self.path, "".join(kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._writer = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def report(self, result: LoopResult) -> dict:
        return {"steps": result.steps, "resumed_from": result.resumed_from, "first_loss": self.first,
                "final_loss": result.final_loss, "seconds": round(result.seconds, 2),
                "earlier_seconds": round(result.earlier_seconds, 2),
                "tokens_per_second": round(result.tokens_per_second, 1)}


# -- example sets ---------------------------------------------------------------------------------

def question_pairs(
    builder: ExampleBuilder, split: LampSplit, limit: int | None = None, history_pairs: int = 0
) -> list[Example]:
    """Stage-1 data: other users' questions with their gold outputs (and, optionally, their latest
    history records as pairs too: still other users' data, and cheap extra task supervision)."""
    qs = split.questions[:limit] if limit else split.questions
    out = [builder.for_question(q, answer=split.gold(q.id)) for q in qs]
    if history_pairs:
        for q in qs:
            out += builder.from_history(q.user_id, q.profile, history_pairs)
    return out


def history_examples(builder: ExampleBuilder, split: LampSplit, max_pairs: int | None) -> list[Example]:
    """Stage-2 data: each target user's history records replayed as (input, output) pairs."""
    out: list[Example] = []
    for q in split.questions:
        out += builder.from_history(q.user_id, q.profile, max_pairs)
    builder.undated.report(f"{split.task} history")
    if builder.skipped_history:
        log.warning("%s: %d history records have no answer to learn from and were skipped",
                    split.task, builder.skipped_history)
    return out


# -- stage 1: task LoRA -----------------------------------------------------------------------------

STAGE1_STAMP = "tapper_stage1.json"  # beside the adapter: what it was trained from
STAGE1_MODEL_KEYS = ("task_lora_r", "task_lora_alpha", "task_lora_dropout", "lora_targets", "max_answer_tokens")
STAGE1_TRAIN_KEYS = ("seed", "batch_size", "stage1_lr", "stage1_epochs", "warmup_ratio", "weight_decay",
                     "max_grad_norm", "dtype")  # an fp32 run does not reuse a bf16 adapter


def stage1_fingerprint(backbone: Backbone, examples: list[Example], tcfg: TapperConfig, cfg: TrainConfig) -> str:
    """Hash of everything a task adapter depends on: backbone, settings and the exact training pairs."""
    h = hashlib.sha256(backbone.name.encode())
    h.update(json.dumps({k: getattr(tcfg, k) for k in STAGE1_MODEL_KEYS}, sort_keys=True).encode())
    h.update(json.dumps({k: getattr(cfg, k) for k in STAGE1_TRAIN_KEYS}, sort_keys=True).encode())
    for e in examples:
        h.update(f"\x00{e.prompt}\x01{e.answer}".encode())
    return h.hexdigest()[:16]


def train_task_lora(
    backbone: Backbone, examples: list[Example], tcfg: TapperConfig, cfg: TrainConfig, run_dir: Path,
    report: dict | None = None,
) -> Backbone:
    """Train the task LoRA on other users' pairs, save it, and return the backbone with it merged in.
    A run that already holds a task adapter made from the same examples and settings reuses it (a resumed
    run does not redo stage 1); an adapter made from anything else is trained again and replaced.
    `report`, when given, receives what happened (status "reused" or "trained", steps, losses, seconds)."""
    report = {} if report is None else report
    backbone_identity(backbone)  # kept on the model object: the weights before the task LoRA is merged in
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Two processes sharing a work dir (e.g. a comparison split by method) would both train this adapter and
    # write one checkpoint and log: the second waits here, then finds the first's adapter and reuses it.
    # Under torchrun the ranks train it together, so they take no lock.
    with nullcontext() if distributed.active() else one_writer(run_dir / "stage1.lock", "stage 1 (task LoRA)"):
        return _train_task_lora(backbone, examples, tcfg, cfg, run_dir, report)


def _train_task_lora(backbone: Backbone, examples: list[Example], tcfg: TapperConfig, cfg: TrainConfig,
                     run_dir: Path, report: dict) -> Backbone:
    adapter_dir = run_dir / TASK_ADAPTER_DIR
    made_from = stage1_fingerprint(backbone, examples, tcfg, cfg)
    report.update(examples=len(examples), adapter=str(adapter_dir))
    if adapter_dir.exists():
        stamp = adapter_dir / STAGE1_STAMP
        kept = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") if stamp.exists() else None
        if kept == made_from:
            log.info("stage 1 (task LoRA): reusing %s (made from the same %d examples and settings)",
                     adapter_dir, len(examples))
            report.update(status="reused")
            return merge_task_adapter(backbone, adapter_dir)
        log.warning("stage 1 (task LoRA): %s was made from other examples or settings (%s): training again",
                    adapter_dir, "no stamp" if kept is None else kept)
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn from the global RNG: same seed, same adapter
    peft_model = add_lora(
        backbone.model, tcfg.task_lora_r, tcfg.task_lora_alpha, tcfg.task_lora_dropout, tcfg.lora_targets
    )
    tok = backbone.tokenizer

    def loss_fn(batch: list[Example]) -> tuple[torch.Tensor, int]:
        return answer_loss(peft_model, tok, [e.prompt for e in batch], [e.answer or "" for e in batch],
                           tcfg.max_answer_tokens)

    steps = StepLog(run_dir if distributed.is_main() else None, "stage1", "stage 1 (task LoRA)", cfg.show_progress)
    try:
        result = train(peft_model, examples, loss_fn, _loop(cfg, cfg.stage1_lr, cfg.stage1_epochs),
                       checkpoint_dir=run_dir / "checkpoints" / "stage1", desc="stage 1 (task LoRA)", on_step=steps,
                       parallel=distributed.data_parallel(distributed.answer_weight(tok, tcfg.max_answer_tokens)),
                       length=token_length(tok, tcfg.max_answer_tokens))
    finally:
        steps.close()
    report.update(status="trained", **steps.report(result))
    log.info("stage 1 (task LoRA): trained %d steps on %d examples, loss %s -> %.4f (%.1f s, %.0f tok/s)",
             result.steps, len(examples), _loss(steps.first), result.final_loss, result.seconds,
             result.tokens_per_second)

    def save(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp))
        (tmp / STAGE1_STAMP).write_text(json.dumps({"fingerprint": made_from, "examples": len(examples)}) + "\n")

    if distributed.is_main():  # under torchrun every rank holds the same adapter; one writes it
        atomic_replace_dir(adapter_dir, save)
        shutil.rmtree(run_dir / "checkpoints" / "stage1", ignore_errors=True)
    distributed.barrier()
    merged = peft_model.merge_and_unload()
    merged.eval()
    out = Backbone(model=merged, tokenizer=tok, name=backbone.name)
    note_task_adapter(out, adapter_dir)  # a model built on it saves this adapter with itself
    return out


def _loss(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


# -- stage 2: P_u + P_q + bridge --------------------------------------------------------------------

def train_prefixes(model: TapperModel, examples: list[Example], cfg: TrainConfig, run_dir: Path,
                   report: dict | None = None) -> LoopResult:
    """Train the user table, P_q and the bridge together on the target users' history pairs (every step's loss
    goes to RUN/train_log.jsonl; `report`, when given, receives steps, losses and seconds)."""
    model.user_state.add_users([e.user_id for e in examples])
    params: list[nn.Parameter] = []
    lrs: dict[int, float] = {}
    if model.config.use_user_state:
        model.user_state.weight.requires_grad_(True)
        params.append(model.user_state.weight)
        lrs[id(model.user_state.weight)] = cfg.user_lr
    else:
        model.user_state.weight.requires_grad_(False)
    if model.config.use_query_prefix:
        params += list(model.query_prefix.parameters())
    if model.prefix_anchor is not None:
        params.append(model.prefix_anchor)
    params += [p for n, p in model.lm.named_parameters() if "lora_" in n]
    checkpoints = run_dir / "checkpoints" / "stage2"
    steps = StepLog(run_dir if distributed.is_main() else None, "stage2", "stage 2 (prefixes)", cfg.show_progress)
    weight = distributed.answer_weight(model.tokenizer, model.config.max_answer_tokens)
    try:
        result = train(model, examples, model.loss, _loop(cfg, cfg.stage2_lr, cfg.stage2_epochs), params=params,
                       param_lrs=lrs, row_sparse=[model.user_state.weight], checkpoint_dir=checkpoints,
                       desc="stage 2 (prefixes)", on_step=steps, parallel=distributed.data_parallel(weight),
                       length=token_length(model.tokenizer, model.config.max_answer_tokens))
    finally:
        steps.close()
    # A finished stage leaves no checkpoint behind: a later run in this directory must start fresh.
    if distributed.is_main():
        shutil.rmtree(checkpoints, ignore_errors=True)
    distributed.barrier()
    if report is not None:
        report.update(status="trained", examples=len(examples), users=len(model.user_state), **steps.report(result))
    log.info("stage 2 (prefixes): trained %d steps on %d history pairs of %d users, loss %s -> %.4f (%.1f s, "
             "%.0f tok/s)", result.steps, len(examples), len(model.user_state), _loss(steps.first),
             result.final_loss, result.seconds, result.tokens_per_second)
    if model.config.use_user_state and len(model.user_state):
        # Rows far larger than the token embeddings they sit beside are read as noise by the frozen LM.
        with torch.no_grad():
            rows = model.user_state.weight.view(len(model.user_state), model.config.prefix_len, -1).norm(dim=-1)
            tokens = model.hf_model.get_input_embeddings().weight.norm(dim=-1).median()
        log.info("stage 2: P_u vector norm mean %.2f, max %.2f (median token embedding %.2f)",
                 float(rows.mean()), float(rows.max()), float(tokens))
    return result


# -- onboarding: one row, everything shared frozen ----------------------------------------------------

class _Row(nn.Module):
    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.row = nn.Parameter(init.detach().clone())


def fit_user_row(
    model: TapperModel,
    examples: list[Example],
    cfg: TrainConfig,
    init: torch.Tensor | None = None,
    steps: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> torch.Tensor:
    """Fit one P_u row on one user's history pairs; nothing shared changes (its grads are never taken)."""
    start = model.user_state.mean_row() if init is None else init.to(model.device)
    steps = cfg.onboard_steps if steps is None else steps
    if not examples or not model.config.use_user_state or steps == 0:
        return start.detach().clone()
    holder = _Row(start)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.eval()  # no dropout in the frozen parts while one row is fitted
    try:
        def loss_fn(batch: list[Example]) -> tuple[torch.Tensor, int]:
            return model.loss(batch, user_rows=holder.row.expand(len(batch), -1))

        loop = _loop(cfg, cfg.onboard_lr, max_steps=steps)
        loop.checkpoint_every = 0
        loop.show_progress = False
        train(holder, examples, loss_fn, loop, row_sparse=[holder.row], desc="onboard", on_step=progress,
              length=token_length(model.tokenizer, model.config.max_answer_tokens))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return holder.row.detach().clone()


def onboard_users(model: TapperModel, questions: Sequence[Question], cfg: TrainConfig, builder: ExampleBuilder,
                  steps: int | None = None, start: torch.Tensor | None = None,
                  on_user: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Add or refresh each question's user's row from that user's history alone: `steps` (default
    cfg.onboard_steps) from `start`, by default the user's current row, or for a new user the table's mean row
    as it stood before this call (so no new user's start depends on who was onboarded before it). The rows are
    written to the table once, at the end; a user asked twice is refitted from the first fit."""
    cold = model.user_state.mean_row() if start is None else start
    fitted: dict[str, torch.Tensor] = {}
    for q in questions:
        init = fitted.get(q.user_id)
        if init is None:
            known = start is None and q.user_id in model.user_state
            init = model.user_state.rows([q.user_id])[0].detach() if known else cold
        examples = builder.from_history(q.user_id, q.profile, cfg.max_history_pairs)
        fitted[q.user_id] = fit_user_row(model, examples, cfg, init=init, steps=steps)
        if on_user is not None:
            on_user()
    if fitted:
        model.user_state.set_rows(list(fitted), torch.stack(list(fitted.values())))
    return fitted


# -- the whole pipeline -----------------------------------------------------------------------------

def builder_for(model_or_backbone: TapperModel | Backbone, tcfg: TapperConfig,
                history_inputs: dict[str, str] | None = None) -> ExampleBuilder:
    backbone = model_or_backbone
    if isinstance(model_or_backbone, TapperModel):
        backbone = Backbone(model=model_or_backbone.hf_model, tokenizer=model_or_backbone.tokenizer,
                            name=model_or_backbone.backbone_name)
    return ExampleBuilder(get_task(tcfg.task), backbone, tcfg.top_k, tcfg.retriever, tcfg.max_input_tokens,
                          history_inputs, tcfg.max_query_tokens, tcfg.max_record_tokens)


def train_tapper(
    run_dir: str | Path,
    stage1_split: LampSplit | None,
    target_split: LampSplit,
    tcfg: TapperConfig,
    cfg: TrainConfig,
    backbone: Backbone | None = None,
    device: str = "cpu",
    force: bool = False,
) -> TapperModel:
    """Stage 1 on `stage1_split` (other users, with golds; None skips it), then stage 2 on the target
    users' histories. Resumable: rerun the same call after a kill and it continues where it stopped.

    A run that finished from the same settings, data and backbone is loaded, not trained again (force=True
    trains it again); when any of them changed, the log says which before training. The returned model's
    `train_summary` (also RUN/train_summary.json) says what each stage did."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    backbone = backbone or load_backbone(tcfg.backbone, device=device)
    identity = backbone_identity(backbone)
    # The run records where its backbone loads from (an absolute path for a local folder or file), and a
    # retriever registered in this process by its import path: the run must load from any folder or process.
    tcfg = portable_config(replace(tcfg, backbone=identity["source"] or f"(passed as an object: {backbone.name})"))
    inputs = run_inputs(tcfg, cfg, identity, stage1_split, target_split)
    reasons = rerun_reasons(run_dir, inputs)
    if reasons == [] and not force:
        log.info("%s is already trained from these settings, data and backbone: loading it (force=True / --force "
                 "trains it again)", run_dir)
        model = TapperModel.from_pretrained(run_dir, device=device, backbone=backbone)
        model.train_summary = json.loads((run_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
        model.train_summary["status"] = "already finished"
        return model
    if reasons is not None:
        log.info("%s holds a finished run: training it again (%s)", run_dir,
                 "; ".join(reasons) if reasons else "forced")
    distributed.barrier()  # every rank has read the finished-run check before rank 0 changes the files
    if distributed.is_main():  # under torchrun one rank writes the run directory, the others wait at barriers
        (run_dir / SUMMARY_NAME).unlink(missing_ok=True)  # the run is unfinished until the end of this call
        tcfg.save(run_dir / CONFIG_NAME)
        cfg.save(run_dir / TRAIN_CONFIG_NAME)
    summary: dict = {"run": str(run_dir.resolve()), "backbone": identity, "inputs": inputs,
                     "stage1": {"status": "skipped (no stage-1 split)"}, "stage2": {}}
    if stage1_split is not None:
        builder = ExampleBuilder(get_task(tcfg.task), backbone, 0, tcfg.retriever, tcfg.max_input_tokens)
        backbone = train_task_lora(
            backbone,
            question_pairs(builder, stage1_split, cfg.stage1_max_examples, cfg.stage1_history_pairs),
            tcfg, cfg, run_dir, report=summary["stage1"],
        )
    torch.manual_seed(cfg.seed)
    model = TapperModel(backbone, tcfg, sorted({q.user_id for q in target_split.questions}))
    model.train_config = asdict(cfg)
    examples = history_examples(builder_for(backbone, tcfg), target_split, cfg.max_history_pairs)
    train_prefixes(model, examples, cfg, run_dir, report=summary["stage2"])
    summary.update(status="trained", loss_log=LOSS_LOG_NAME)
    if distributed.is_main():
        model.save_pretrained(run_dir)
        atomic_write_text(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")  # last: the run is finished
    distributed.barrier()
    model.train_summary = summary
    return model


UNTRACKED_TRAIN_KEYS = ("show_progress", "checkpoint_every")  # how a run is watched, not what it makes


def split_fingerprint(split: LampSplit | None) -> str | None:
    """sha256 of everything in a split (questions, profiles, golds)."""
    return None if split is None else hashlib.sha256(repr(split).encode()).hexdigest()[:16]


def run_inputs(tcfg: TapperConfig, cfg: TrainConfig, identity: dict, stage1_split: LampSplit | None,
               target_split: LampSplit) -> dict:
    """Everything a finished run was made from, as kept in its train_summary.json."""
    return {
        "model": asdict(tcfg),
        "train": {k: v for k, v in asdict(cfg).items() if k not in UNTRACKED_TRAIN_KEYS},
        "backbone_digest": identity["digest"],
        "stage1_data": split_fingerprint(stage1_split),
        "target_data": split_fingerprint(target_split),
    }


def rerun_reasons(run_dir: Path, inputs: dict) -> list[str] | None:
    """None: no finished run in run_dir. Else what differs from the finished run (empty: nothing)."""
    path = run_dir / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        before = json.loads(path.read_text(encoding="utf-8")).get("inputs", {})
    except json.JSONDecodeError:
        return ["its train_summary.json is unreadable"]
    reasons = []
    for part in ("model", "train"):
        old, new = before.get(part, {}), inputs[part]
        changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                   if old.get(k) != new.get(k)]
        if changed:
            reasons.append(f"{part} settings changed: {', '.join(changed)}")
    if before.get("backbone_digest") != inputs["backbone_digest"]:
        reasons.append("the backbone's weights differ")
    if before.get("stage1_data") != inputs["stage1_data"]:
        reasons.append("the stage-1 data changed")
    if before.get("target_data") != inputs["target_data"]:
        reasons.append("the target users' data changed")
    return reasons


def init_run(out_dir: str | Path, backbone: str = "tiny", task: str = "LaMP_3", **overrides) -> Path:
    """An untrained run directory (random P_q, zero-init bridge, empty user table): for tests and smoke runs."""
    tcfg, _ = resolve_configs(task, {"backbone": backbone, **overrides})
    model = TapperModel(load_backbone(backbone), tcfg)
    model.save_pretrained(out_dir)
    return Path(out_dir)
