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


@dataclass
class VariantResult:
    name: str
    metrics: dict[str, float]
    per_user_params: int
    train_seconds: float
    predict_seconds: float
    predictions: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    model: TapperModel | None = field(default=None, repr=False)  # the trained variant, for follow-up scoring


def copy_backbone(backbone: Backbone) -> Backbone:
    """Peft injects LoRA layers in place, so every variant trains on its own copy."""
    return Backbone(model=copy.deepcopy(backbone.model), tokenizer=backbone.tokenizer, name=backbone.name)


def stage1(backbone: Backbone, split: LampSplit, tcfg: TapperConfig, cfg: TrainConfig, run_dir: Path) -> Backbone:
    builder = builder_for(backbone, replace(tcfg, top_k=0))
    examples = question_pairs(builder, split, cfg.stage1_max_examples, cfg.stage1_history_pairs)
    return train_task_lora(backbone, examples, tcfg, cfg, run_dir)


def evaluate_model(model: TapperModel, target: LampSplit, batch_size: int = 16, show_progress: bool = True,
                   desc: str = "predict") -> tuple[dict[str, float], dict[str, str], dict[str, str], float]:
    builder = builder_for(model, model.config)
    examples = [builder.for_question(q) for q in target.questions]
    began = time.perf_counter()
    preds, raw = predict_examples(model.generate, examples, model.task, batch_size, desc, show_progress)
    seconds = time.perf_counter() - began
    golds = {q.id: target.gold(q.id) for q in target.questions}
    return evaluate(model.task, golds, preds), preds, raw, seconds


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
    began = time.perf_counter()
    if train_stage2:
        examples = history_examples(builder_for(model, tcfg, history_inputs), target, cfg.max_history_pairs)
        train_prefixes(model, examples, cfg, run_dir)
        model.save_pretrained(run_dir)
    train_seconds = time.perf_counter() - began
    metrics, preds, raw, pred_seconds = evaluate_model(model, target, batch_size, cfg.show_progress, name)
    per_user = model.row_size if tcfg.use_user_state else 0
    return VariantResult(name, metrics, per_user, train_seconds, pred_seconds, preds, raw, model)


def score_with_int8_user_state(name: str, model: TapperModel, target: LampSplit, batch_size: int = 16
                               ) -> VariantResult:
    """Score a trained model as it would serve from an int8 user table (per-row scale), then restore it."""
    original = model.user_state.weight.detach().clone()
    q, scale = quantize_rows_int8(original)
    with torch.no_grad():
        model.user_state.weight.copy_(dequantize_rows_int8(q, scale))
    try:
        metrics, preds, raw, seconds = evaluate_model(model, target, batch_size, desc=name)
    finally:
        with torch.no_grad():
            model.user_state.weight.copy_(original)
    return VariantResult(name, metrics, model.row_size if model.config.use_user_state else 0, 0.0, seconds,
                         preds, raw, model)


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric name, higher is better) for a task's headline number."""
    kind = get_task(task).metric
    return {"classification": ("accuracy", True), "regression": ("mae", False),
            "generation": ("rouge-1", True)}[kind]
