"""The shared training loop on a toy problem: per-user rows move only on their users' steps."""

from __future__ import annotations

import torch
from torch import nn

from tapper.train_loop import LoopConfig, train


def _rows_after_each_step(row_sparse: bool) -> tuple[list[list[int]], list[torch.Tensor]]:
    table = nn.Module()
    table.weight = nn.Parameter(torch.zeros(2, 3))
    target = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0]])
    seen: list[list[int]] = []
    snapshots: list[torch.Tensor] = []

    def loss_fn(batch: list[int]) -> tuple[torch.Tensor, int]:
        seen.append(list(batch))
        return ((table.weight[batch] - target[batch]) ** 2).sum(), len(batch)

    def on_step(step: int, steps: int, loss: float) -> None:
        snapshots.append(table.weight.detach().clone())

    cfg = LoopConfig(lr=0.1, epochs=4, batch_size=1, show_progress=False)
    train(table, [0, 1], loss_fn, cfg, row_sparse=[table.weight] if row_sparse else (), on_step=on_step)
    return seen, snapshots


def test_a_users_row_moves_only_on_steps_that_hold_that_user():
    seen, snapshots = _rows_after_each_step(row_sparse=True)
    before = torch.zeros(2, 3)
    for batch, after in zip(seen, snapshots, strict=True):
        for row in (0, 1):
            moved = not torch.equal(after[row], before[row])
            assert moved == (row in batch), (batch, row)
        before = after


def test_with_plain_adam_momentum_absent_rows_keep_moving():
    """Why row_sparse exists: the default optimizer moves a row on steps without its user."""
    seen, snapshots = _rows_after_each_step(row_sparse=False)
    before = torch.zeros(2, 3)
    drift = 0
    for batch, after in zip(seen, snapshots, strict=True):
        drift += sum(not torch.equal(after[r], before[r]) for r in (0, 1) if r not in batch)
        before = after
    assert drift > 0
