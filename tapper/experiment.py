"""Train-and-evaluate wiring shared by the demo, the CLI and the benchmarks: one stage 1, then any
number of stage-2 variants (TAP-PER, its ablations, the same-budget non-personalized LoRA) on copies
of the same task-tuned backbone, each scored with LaMP's metrics on the same target questions."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tapper.backbone import Backbone
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.metrics import evaluate
from tapper.predict import predict_examples
from tapper.prefix.config import TapperConfig
from tapper.prefix.model import TapperModel
from tapper.prefix.user_state import dequantize_rows_int8, quantize_rows_int8
from tapper.train import (
    TrainConfig,
    builder_for,
    history_examples,
    question_pairs,
    train_prefixes,
    train_task_lora,
)
from tapper.train_loop import TrainingClock


@dataclass
class VariantResult:
    name: str
    metrics: dict[str, float]
    per_user_params: int
    train_seconds: float
    predict_seconds: float
    predictions: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)  # a few full prompts as the model saw them
    model: TapperModel | None = field(default=None, repr=False)  # the trained variant, for follow-up scoring


def copy_backbone(backbone: Backbone) -> Backbone:
    """Peft injects LoRA layers in place, so every variant trains on its own copy."""
    return Backbone(model=copy.deepcopy(backbone.model), tokenizer=backbone.tokenizer, name=backbone.name)


def stage1(backbone: Backbone, split: LampSplit, tcfg: TapperConfig, cfg: TrainConfig, run_dir: Path) -> Backbone:
    builder = builder_for(backbone, replace(tcfg, top_k=0))
    examples = question_pairs(builder, split, cfg.stage1_max_examples, cfg.stage1_history_pairs)
    return train_task_lora(backbone, examples, tcfg, cfg, run_dir)


KEPT_PROMPTS = 3  # prompts kept per method in results: enough to see what the model was shown


def shown_prompts(examples, query_prefix: bool = False) -> dict[str, str]:
    """The first few prompts; with query_prefix, each followed by the records P_q attended (a prefix is not
    text, so this is what it was computed from)."""
    out = {}
    for e in examples[:KEPT_PROMPTS]:
        records = "".join(f"\n[record for P_q] {t}" for t in e.context.record_texts) if query_prefix else ""
        out[e.example_id] = e.prompt + records
    return out


def evaluate_model(model: TapperModel, target: LampSplit, name: str = "predict", batch_size: int = 16,
                   show_progress: bool = True, train_seconds: float = 0.0) -> VariantResult:
    """Answer the target questions with a TAP-PER-shaped model and score them with LaMP's metrics."""
    builder = builder_for(model, model.config)
    examples = [builder.for_question(q) for q in target.questions]
    began = time.perf_counter()
    preds, raw = predict_examples(model.generate, examples, model.task, batch_size, name, show_progress)
    seconds = time.perf_counter() - began
    golds = {q.id: target.gold(q.id) for q in target.questions}
    per_user = model.row_size if model.config.use_user_state else 0
    return VariantResult(name, evaluate(model.task, golds, preds), per_user, train_seconds, seconds, preds, raw,
                         shown_prompts(examples, model.config.use_query_prefix), model)


def run_variant(
    name: str,
    tuned: Backbone,
    target: LampSplit,
    tcfg: TapperConfig,
    cfg: TrainConfig,
    run_dir: Path,
    train_stage2: bool = True,
    batch_size: int = 16,
    history_inputs: dict[str, str] | None = None,
) -> VariantResult:
    torch.manual_seed(cfg.seed)
    users = sorted({q.user_id for q in target.questions})
    model = TapperModel(copy_backbone(tuned), tcfg, users)
    with TrainingClock() as clock:  # counts what a resumed stage 2 kept from its earlier processes
        if train_stage2:
            examples = history_examples(builder_for(model, tcfg, history_inputs), target, cfg.max_history_pairs)
            train_prefixes(model, examples, cfg, run_dir)
            model.save_pretrained(run_dir)
    return evaluate_model(model, target, name, batch_size, cfg.show_progress, clock.seconds)


def score_with_int8_user_state(name: str, model: TapperModel, target: LampSplit, batch_size: int = 16
                               ) -> VariantResult:
    """Score a trained model as it would serve from an int8 user table (per-row scale), then restore it."""
    original = model.user_state.weight.detach().clone()
    q, scale = quantize_rows_int8(original)
    with torch.no_grad():
        model.user_state.weight.copy_(dequantize_rows_int8(q, scale))
    try:
        return evaluate_model(model, target, name, batch_size)
    finally:
        with torch.no_grad():
            model.user_state.weight.copy_(original)


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric name, higher is better) for a task's headline number."""
    kind = get_task(task).metric
    return {"classification": ("accuracy", True), "regression": ("mae", False),
            "generation": ("rouge-1", True)}[kind]
