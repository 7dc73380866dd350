"""P_u: one learned row of L*d numbers per user, the only per-user parameter of TAP-PER."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.io_utils import atomic_write_text, atomic_write_with

WEIGHTS_NAME = "user_state.safetensors"
USERS_NAME = "users.json"


def quantize_rows_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: row ~= q * scale, with scale = max|row| / 127."""
    scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def dequantize_rows_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * scale[:, None]


class UserStateTable(nn.Module):
    """Rows keyed by the data's own user ids (strings). Adding users never touches existing rows."""

    def __init__(self, row_size: int, user_ids: Sequence[str] = (), init_std: float = 0.02, seed: int = 0):
        super().__init__()
        self.row_size = row_size
        self.init_std = init_std
        self._generator = torch.Generator().manual_seed(seed)
        self.user_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.weight = nn.Parameter(torch.empty(0, row_size))
        self.add_users(user_ids)

    def __len__(self) -> int:
        return len(self.user_ids)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self.index

    def add_users(self, user_ids: Sequence[str]) -> list[int]:
        """Append fresh N(0, init_std) rows for ids not yet in the table; returns every id's row index."""
        new = [u for u in dict.fromkeys(user_ids) if u not in self.index]
        if new:
            fresh = torch.randn(len(new), self.row_size, generator=self._generator) * self.init_std
            data = torch.cat([self.weight.detach().cpu(), fresh]).to(self.weight.device)
            self.weight = nn.Parameter(data, requires_grad=self.weight.requires_grad)
            for u in new:
                self.index[u] = len(self.user_ids)
                self.user_ids.append(u)
        return [self.index[u] for u in user_ids]

    def mean_row(self) -> torch.Tensor:
        """The cold-start row: what an average trained user looks like."""
        if len(self) == 0:
            return torch.zeros(self.row_size, device=self.weight.device)
        return self.weight.detach().mean(dim=0)

    def rows(self, user_ids: Sequence[str]) -> torch.Tensor:
        """(B, L*d) rows; users without a row get the mean row. Gradients flow to known rows."""
        known = [self.index.get(u, -1) for u in user_ids]
        idx = torch.tensor([max(i, 0) for i in known], device=self.weight.device, dtype=torch.long)
        # index_select, not weight[idx]: the latter's backward sums a user's repeated rows in a thread-dependent
        # order on CPU, and Adam turns those last-bit differences into different rows from run to run.
        out = (self.weight.index_select(0, idx) if len(self)
               else torch.zeros(len(known), self.row_size, device=self.weight.device))
        unknown = torch.tensor([i < 0 for i in known], device=self.weight.device)
        if bool(unknown.any()):
            out = torch.where(unknown[:, None], self.mean_row()[None, :], out)
        return out

    def set_row(self, user_id: str, row: torch.Tensor) -> None:
        self.set_rows([user_id], row[None])

    def set_rows(self, user_ids: Sequence[str], rows: torch.Tensor) -> None:
        """Write (N, L*d) rows, appending the ids the table lacks in one go: growing the table one user at a
        time copies it whole for every user, quadratic in a large onboarding."""
        if len(set(user_ids)) != len(user_ids):
            raise ValueError("set_rows: an id appears more than once")
        if tuple(rows.shape) != (len(user_ids), self.row_size):
            raise ValueError(f"set_rows: rows of shape {tuple(rows.shape)}, expected ({len(user_ids)}, "
                             f"{self.row_size})")
        idx = torch.tensor(self.add_users(user_ids), dtype=torch.long, device=self.weight.device)
        with torch.no_grad():
            self.weight[idx] = rows.to(self.weight)

    def save_pretrained(self, directory: str | Path, int8: bool = False) -> None:
        directory = Path(directory)
        weight = self.weight.detach().cpu().contiguous()
        if int8:
            q, scale = quantize_rows_int8(weight)
            tensors = {"rows_int8": q, "row_scale": scale}
        else:
            tensors = {"rows": weight}
        atomic_write_with(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
        meta = {"row_size": self.row_size, "init_std": self.init_std, "int8": int8, "user_ids": self.user_ids}
        atomic_write_text(directory / USERS_NAME, json.dumps(meta, ensure_ascii=False) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> UserStateTable:
        directory = Path(directory)
        meta = json.loads((directory / USERS_NAME).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / WEIGHTS_NAME))
        rows = (
            dequantize_rows_int8(tensors["rows_int8"], tensors["row_scale"]) if meta["int8"] else tensors["rows"]
        )
        if rows.shape != (len(meta["user_ids"]), meta["row_size"]):
            raise ValueError(
                f"{directory}: {WEIGHTS_NAME} holds {tuple(rows.shape)} but {USERS_NAME} lists "
                f"{len(meta['user_ids'])} users of row size {meta['row_size']}"
            )
        table = cls(meta["row_size"], init_std=meta["init_std"])
        table.user_ids = list(meta["user_ids"])
        table.index = {u: i for i, u in enumerate(table.user_ids)}
        table.weight = nn.Parameter(rows.clone())
        return table
