"""A trained TAP-PER run loaded for serving: stateless with respect to users.

The service owns the user state (history and P_u rows live in its store); every request carries what the
engine needs, so one engine serves any number of users and a row can be swapped without reloading anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel

from tapper.data.records import ProfileItem
from tapper.precision import autocast, cast_frozen, count_params, dtype_name, resolve_dtype
from tapper.prefix.model import TapperModel
from tapper.train import TRAIN_CONFIG_NAME, TrainConfig, builder_for, fit_user_row

GenerationPath = Literal["personalized", "cold_start", "non_personalized"]


@dataclass
class GenerationRequest:
    user_id: str
    input: str  # the raw query text; the engine applies the task's prompt format
    history: list[ProfileItem] = field(default_factory=list)  # the user's records, ordered by (day, position)
    user_row: torch.Tensor | None = None  # P_u row, shape (L * d,); None -> cold start (mean row)
    query_day: float | None = None


@dataclass
class GenerationResult:
    output: str  # the task-cleaned answer
    raw: str  # the raw generated text
    record_ids: list[str]  # ids of the records that fed P_q, best first
    path: GenerationPath


class TapperEngine:
    """Serves one trained run. Thread-safe for concurrent generate and fit_user_row calls: serving never
    changes a shared weight, so the only per-call state is the row being fitted."""

    def __init__(self, model: TapperModel, train_config: TrainConfig | None = None, merge_bridge: bool = True,
                 dtype: str = "fp32"):
        """merge_bridge=False keeps the bridge LoRA as a separate adapter (only bench/speed.py wants that).
        dtype (tapper.precision: fp32 | bf16 | auto): bf16 holds the backbone in bf16 once the bridge is merged
        (in float32); P_q, the rows and every fitted row stay float32."""
        self.model = model.eval()
        if merge_bridge and isinstance(model.lm, PeftModel):
            # The bridge is shared by every user and never trained while serving: merged into the weights
            # it costs nothing per token (bench/speed.py: 0.97x the non-personalized latency, 1.05x unmerged).
            model.lm = model.lm.merge_and_unload()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = resolve_dtype(dtype, model.device, count_params(model.hf_model))
        cast_frozen(model.hf_model, self.dtype)
        self.train_config = train_config or TrainConfig(show_progress=False)
        self.train_config.show_progress = False
        self.train_config.dtype = dtype_name(self.dtype)  # onboarding runs in the serving precision
        self.task = model.task
        self.row_size = model.row_size
        self.builder = builder_for(model, model.config)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", backbone=None,
                        allow_other_backbone: bool = False, dtype: str = "fp32") -> TapperEngine:
        """backbone / allow_other_backbone: as in TapperModel.from_pretrained; dtype: as in __init__."""
        path = Path(path)
        model = TapperModel.from_pretrained(path, device=device, backbone=backbone,
                                            allow_other_backbone=allow_other_backbone)
        cfg_path = path / TRAIN_CONFIG_NAME
        return cls(model, TrainConfig.load(cfg_path) if cfg_path.exists() else None, dtype=dtype)

    def default_row(self) -> torch.Tensor:
        """The cold-start row (the mean of the trained rows)."""
        return self.model.user_state.mean_row().detach().clone()

    def generate(
        self, requests: list[GenerationRequest], max_new_tokens: int | None = None
    ) -> list[GenerationResult]:
        """All requests in one batched forward pass, each row with its own user's prefix.

        No row -> the mean row (cold start) plus P_q from whatever history there is; no history either
        -> the mean row alone: the population-average prefix, which says nothing about this user."""
        if not requests:
            return []
        examples = [
            self.builder.for_query(r.user_id, r.input, r.history, query_day=r.query_day, example_id=str(i))
            for i, r in enumerate(requests)
        ]
        default = self.default_row()
        rows = torch.stack([default if r.user_row is None else r.user_row.to(default) for r in requests])
        with autocast(self.dtype, self.model.device):  # P_q reads bf16 embeddings when the weights are bf16
            raw = self.model.generate(examples, user_rows=rows, max_new_tokens=max_new_tokens)
        results = []
        for r, ex, text in zip(requests, examples, raw, strict=True):
            path: GenerationPath = (
                "personalized" if r.user_row is not None else "cold_start" if r.history else "non_personalized"
            )
            results.append(GenerationResult(self.task.clean_output(text), text, list(ex.context.record_ids), path))
        return results

    def fit_user_row(
        self,
        history: list[ProfileItem],
        *,
        steps: int | None = None,
        init: torch.Tensor | None = None,
        progress: Callable[[int, int, float], None] | None = None,  # (step, total, loss)
    ) -> torch.Tensor:
        """Onboarding: fit one P_u row from this history alone, everything shared frozen."""
        examples = self.builder.from_history("onboarding", history, self.train_config.max_history_pairs)
        return fit_user_row(self.model, examples, self.train_config, init=init, steps=steps, progress=progress)
