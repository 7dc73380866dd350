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

from tapper.data.records import ProfileItem

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
    """Implemented by the lead in this file; signatures are fixed."""

    row_size: int  # L * d

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> TapperEngine:
        raise NotImplementedError

    def generate(
        self, requests: list[GenerationRequest], max_new_tokens: int | None = None
    ) -> list[GenerationResult]:
        """All requests in one batched forward pass, each row with its own user's prefix."""
        raise NotImplementedError

    def fit_user_row(
        self,
        history: list[ProfileItem],
        *,
        steps: int | None = None,
        init: torch.Tensor | None = None,
        progress: Callable[[int, int, float], None] | None = None,  # (step, total, loss)
    ) -> torch.Tensor:
        """Onboarding: fit one P_u row from this history alone, everything shared frozen."""
        raise NotImplementedError

    def default_row(self) -> torch.Tensor:
        """The cold-start row (the mean of the trained rows)."""
        raise NotImplementedError
