"""The shared training loop on a toy problem: per-user rows move only on their users' steps."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from tapper.train_loop import LoopConfig, TrainingClock, train


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


def test_row_adam_updates_a_row_as_if_it_trained_alone():
    """A row's update depends on its own steps only, not on how many global steps passed before its user
    was sampled: the row sampled late gets the same first update as the row sampled first."""
    from tapper.row_adam import RowAdam

    table = nn.Parameter(torch.zeros(3, 4))
    opt = RowAdam([table], lr=0.01)
    grad = torch.tensor([0.5, -1.0, 2.0, 0.1])
    for _step in range(5):  # row 0 alone for five steps, then row 2 once
        table.grad = torch.zeros(3, 4)
        table.grad[0] = grad
        opt.step()
    table.grad = torch.zeros(3, 4)
    table.grad[2] = grad
    opt.step()
    alone = nn.Parameter(torch.zeros(1, 4))
    ref = torch.optim.Adam([alone], lr=0.01)
    alone.grad = grad[None].clone()
    ref.step()
    assert torch.allclose(table[2], alone[0], atol=1e-7)
    assert torch.equal(table[1], torch.zeros(4))  # never in a batch: never moved
    # five steps of Adam on row 0 equal five steps of Adam on that row alone
    alone0 = nn.Parameter(torch.zeros(1, 4))
    ref0 = torch.optim.Adam([alone0], lr=0.01)
    for _ in range(5):
        alone0.grad = grad[None].clone()
        ref0.step()
    assert torch.allclose(table[0], alone0[0], atol=1e-6)


def test_warmup_then_linear_decay():
    from tapper.train_loop import lr_factor

    cfg = LoopConfig(warmup_ratio=0.1, decay="linear")
    factors = [lr_factor(s, 100, cfg) for s in range(100)]
    assert factors[0] < factors[5] < factors[9] < 1.0  # rising over the first 10 steps
    assert factors[10] == 1.0 and factors[99] < 0.02  # then down to ~0 at the end
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(50, 100, LoopConfig()) == 1.0  # the default stays constant


class _Planted:
    """A pickle that, when loaded, writes a file: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "pwned"))


def _toy(tmp_path, steps: int, kill_at: int | None = None):
    torch.manual_seed(0)
    module = nn.Linear(3, 1)
    data = [torch.randn(3) for _ in range(8)]

    def loss_fn(batch):
        if kill_at is not None and _toy.calls == kill_at:
            raise KeyboardInterrupt
        _toy.calls += 1
        return sum(module(x).pow(2).sum() for x in batch) / len(batch), len(batch)

    _toy.calls = 0
    cfg = LoopConfig(lr=0.01, max_steps=steps, batch_size=2, checkpoint_every=2, show_progress=False,
                     warmup_ratio=0.2, decay="linear")
    train(module, data, loss_fn, cfg, checkpoint_dir=tmp_path / "ckpt")
    return module


def test_resuming_never_unpickles_a_planted_file(tmp_path):
    import pickle

    marker = tmp_path / "marker"
    try:
        _toy(tmp_path, 6, kill_at=5)
    except KeyboardInterrupt:
        pass
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "trainer_state.json").exists()
    for name in ("optimizer.pt", "rng.pt", "state.pkl"):
        (ckpt / name).write_bytes(pickle.dumps(_Planted(marker)))
    resumed = _toy(tmp_path, 6)
    assert not marker.exists()
    # and the resumed run ends where an uninterrupted one does
    straight = _toy(tmp_path / "again", 6)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


# -- length-bucketed batches ------------------------------------------------------------------------

def _lengths(n: int, seed: int = 1) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.choice([20, 40, 80, 160, 320]) + rng.randrange(10) for _ in range(n)]


def test_bucketed_batches_cover_each_epoch_once_and_repeat_under_the_seed():
    from tapper.train_loop import batch_order, total_steps

    n, lengths = 203, _lengths(203)
    cfg = LoopConfig(batch_size=8, epochs=2, seed=5, bucket_window=4)
    steps = total_steps(n, cfg)
    batches = batch_order(n, steps, cfg, lengths)
    assert batches == batch_order(n, steps, cfg, lengths)  # a resumed run sees the same batches
    assert batches != batch_order(n, steps, LoopConfig(**{**cfg.__dict__, "seed": 6}), lengths)
    per_epoch = steps // 2
    for epoch in (batches[:per_epoch], batches[per_epoch:]):
        assert sorted(i for b in epoch for i in b) == list(range(n))  # every example once an epoch
        assert sum(len(b) < 8 for b in epoch) == 1  # one short batch (203 = 25 x 8 + 3)


def test_bucketing_cuts_padding_and_can_be_switched_off():
    from tapper.train_loop import batch_order, padding_share

    n, lengths = 400, _lengths(400)
    on = LoopConfig(batch_size=8, seed=0)
    off = LoopConfig(batch_size=8, seed=0, bucket=False)
    shuffled = batch_order(n, 50, off, lengths)
    assert shuffled == batch_order(n, 50, on)  # bucket off, or no lengths: the old order exactly
    bucketed = batch_order(n, 50, on, lengths)
    assert padding_share(bucketed, lengths) < 0.5 * padding_share(shuffled, lengths)
    # the batches' order is shuffled: lengths do not simply rise through the epoch
    firsts = [lengths[b[0]] for b in bucketed]
    assert firsts != sorted(firsts)


def test_train_forms_batches_from_example_lengths():
    """train() buckets by example_length (characters of prompt + answer) unless told otherwise."""
    from tapper.train_loop import example_length

    class Ex:
        def __init__(self, prompt, answer):
            self.prompt, self.answer = prompt, answer

    assert example_length(Ex("abc", "de")) == 5 and example_length(Ex("abc", None)) == 3
    assert example_length(object()) is None
    weight = nn.Parameter(torch.zeros(1))
    examples = [Ex("x" * n, "") for n in [1, 100, 2, 101, 3, 102, 4, 103]]
    seen = []

    def loss_fn(batch):
        seen.append(sorted(len(e.prompt) for e in batch))
        return (weight ** 2).sum() + sum(len(e.prompt) for e in batch) * 0.0, len(batch)

    holder = nn.Module()
    holder.weight = weight
    train(holder, examples, loss_fn, LoopConfig(lr=0.1, max_steps=2, batch_size=4, show_progress=False))
    assert sorted(seen) == [[1, 2, 3, 4], [100, 101, 102, 103]]


def test_token_length_counts_the_tokens_training_sees():
    """Buckets by the tokenizer's count, not by characters: short words are many tokens in few characters."""
    from tapper.train_loop import example_length, token_length

    def words(text, add_special_tokens=True):  # a tokenizer whose tokens are words
        assert add_special_tokens is False  # counted as training encodes: no BOS inside a prompt
        return {"input_ids": text.split()}

    class Ex:
        def __init__(self, prompt, answer):
            self.prompt, self.answer = prompt, answer

    count = token_length(words, max_answer_tokens=3)
    many_short, few_long = Ex("a b c d e f", "x"), Ex("extraordinarily unbelievable", "y")
    assert count(many_short) == 6 + 1 + 1 and count(few_long) == 2 + 1 + 1  # prompt + answer + end of answer
    assert example_length(many_short) < example_length(few_long)  # characters would put them the other way
    assert count(Ex("hi", "one two three four five six")) == 1 + 3 + 1  # the answer cut as training cuts it
    assert count(Ex("hi", None)) == 1 + 0 + 1
    assert count("plain") == example_length("plain")  # not an Example: its own length


def test_length_buckets_can_be_switched_off_for_tapper_and_the_peers():
    """`--set length_buckets=false` gives the plain shuffled order: what the speed comparisons call 'before'."""
    from tapper.baselines.common import BaselineConfig
    from tapper.train import TrainConfig, _loop

    assert _loop(TrainConfig(), 1e-3).bucket and not _loop(TrainConfig(length_buckets=False), 1e-3).bucket
    assert BaselineConfig.for_task("LaMP_3").loop(1e-3).bucket
    assert not BaselineConfig.for_task("LaMP_3", length_buckets=False).loop(1e-3).bucket


def test_a_resumed_run_reports_the_training_time_its_checkpoint_kept(tmp_path):
    """Timing a killed-then-resumed training must count the steps the killed process did and the checkpoint
    kept; timing only the last process would make a resumed method look cheaper than it was."""
    data = [torch.randn(3) for _ in range(8)]
    cfg = LoopConfig(lr=0.01, max_steps=6, batch_size=2, checkpoint_every=2, show_progress=False)

    def run(kill_at: int | None = None):
        torch.manual_seed(0)  # the same starting weights, so the rerun is the same run and resumes
        module, calls = nn.Linear(3, 1), [0]

        def loss_fn(batch):
            if calls[0] == kill_at:
                raise KeyboardInterrupt
            calls[0] += 1
            time.sleep(0.05)  # each step costs a known minimum of wall time
            return sum(module(x).pow(2).sum() for x in batch) / len(batch), len(batch)

        return train(module, data, loss_fn, cfg, checkpoint_dir=tmp_path / "ckpt")

    with pytest.raises(KeyboardInterrupt):
        run(kill_at=5)
    kept = json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())
    assert kept["step"] == 4 and kept["seconds"] >= 4 * 0.05

    with TrainingClock() as clock:
        result = run()
    assert result.resumed_from == 4
    assert result.earlier_seconds == pytest.approx(kept["seconds"])
    assert clock.seconds >= kept["seconds"] + result.seconds
