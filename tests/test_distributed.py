"""Training on 2 CPU processes (gloo) gives what 1 process gives with the same global batch.

The comparison runs `train_tapper` (stage 1 and stage 2, with the run directory written by rank 0) on a tiny
backbone: once in this process and once in 2 spawned processes that start the process group the way torchrun
does (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tapper import distributed
from tapper.backbone import tiny_backbone
from tapper.batching import encode_train
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.examples import Example
from tapper.prefix import TapperConfig
from tapper.train import TrainConfig

TITLES = ["rain", "markets fall again today", "a new cafe opens", "city council votes on the long budget",
          "cats", "the team wins", "how to cook rice in ten minutes flat", "storm"]


def _split(users: range, with_golds: bool) -> LampSplit:
    """LaMP-4 users whose headlines have different lengths, so that ranks' slices hold different numbers of
    answer tokens (the case where a mean of per-rank means would be wrong)."""
    questions = []
    for u in users:
        profile = [ProfileItem(id=f"u{u}r{j}", fields={"text": f"article {j} by writer {u} about {TITLES[(u + j) % 8]}",
                                                        "title": TITLES[(u * 3 + j) % 8]},
                               day=float(10 * j + u), position=j) for j in range(3)]
        questions.append(Question(id=f"q{u}", input=f"Generate a headline for the following article: news {u}",
                                  profile=profile, user_id=f"user{u}"))
    golds = {q.id: TITLES[(i * 5) % 8] for i, q in enumerate(questions)} if with_golds else None
    return LampSplit(task="LaMP_4", questions=questions, golds=golds)


def _configs() -> tuple[TapperConfig, TrainConfig]:
    # No dropout: masks drawn for a batch of 4 and for two slices of 2 differ, so with dropout the two runs are
    # the same training in distribution only, never weight for weight.
    tcfg = TapperConfig(task="LaMP_4", backbone="tiny", prefix_len=2, top_k=2, bridge_dropout=0.0,
                        task_lora_dropout=0.0, max_input_tokens=96, max_query_tokens=48, max_record_tokens=48,
                        max_answer_tokens=24)
    # stage 1: 8 questions + 8 history pairs = 16 examples, 1 epoch at batch 4: 4 steps; stage 2: 5 users x 3
    # pairs = 15 examples, 1 epoch: 4 steps. checkpoint_every=2 exercises rank 0's checkpoint writes.
    cfg = TrainConfig(batch_size=4, stage1_epochs=1.0, stage1_history_pairs=1, stage2_epochs=1.0, stage1_lr=1e-2,
                      stage2_lr=1e-2, user_lr=1e-2, max_history_pairs=3, checkpoint_every=2, show_progress=False)
    return tcfg, cfg


def _trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Stage 1 (task LoRA, merged) then stage 2 (P_u, P_q, bridge), as train_tapper runs them."""
    from tapper.data.tasks import get_task
    from tapper.examples import ExampleBuilder
    from tapper.prefix import TapperModel
    from tapper.train import builder_for, history_examples, question_pairs, train_prefixes, train_task_lora

    tcfg, cfg = _configs()
    torch.manual_seed(cfg.seed)
    backbone = tiny_backbone(seed=0)
    stage1 = question_pairs(ExampleBuilder(get_task("LaMP_4"), backbone, 0, "bm25", tcfg.max_input_tokens),
                            _split(range(8), True), None, cfg.stage1_history_pairs)
    backbone = train_task_lora(backbone, stage1, tcfg, cfg, run_dir)
    target = _split(range(10, 15), False)
    torch.manual_seed(cfg.seed)
    model = TapperModel(backbone, tcfg, sorted({q.user_id for q in target.questions}))
    train_prefixes(model, history_examples(builder_for(backbone, tcfg), target, cfg.max_history_pairs), cfg, run_dir)
    if distributed.is_main():
        model.save_pretrained(run_dir)
    distributed.barrier()
    named = _named(model)
    # stage 1's adapter as rank 0 saved it (merged into the backbone in memory)
    adapter = load_file(str(run_dir / "task_adapter" / "adapter_model.safetensors"))
    named.update({f"task.{n}": t for n, t in adapter.items()})
    return {n: t.contiguous() for n, t in named.items()}


def _named(model) -> dict[str, torch.Tensor]:
    named = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    named["user_state"] = model.user_state.weight.detach().clone()
    named.update({f"query_prefix.{n}": p.detach().clone() for n, p in model.query_prefix.named_parameters()})
    return named


def _gradient_check() -> dict[str, torch.Tensor]:
    """One stage-2 batch's gradient, by name: this rank's slice through DataParallel (wrap, backward, sync)
    and, for comparison, the whole batch in this process alone. User 10 is in both ranks' slices."""
    from tapper.prefix import TapperModel
    from tapper.train import builder_for, history_examples

    tcfg, cfg = _configs()
    torch.manual_seed(cfg.seed)
    model = TapperModel(tiny_backbone(seed=0), tcfg, [f"user{u}" for u in range(10, 15)]).train()
    with torch.no_grad():  # a bridge that is not zero, so that every LoRA matrix gets gradient
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    exs = history_examples(builder_for(model, tcfg), _split(range(10, 15), False), 3)
    batch = [exs[2], exs[5], exs[1], exs[8]]  # users 10, 11 | 10, 12; each pair has earlier records for P_q
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    named["user_state.weight"] = model.user_state.weight.requires_grad_(True)
    loss, _ = model.loss(batch)
    loss.backward()
    out = {f"alone.{n}": p.grad.clone() for n, p in named.items()}
    out["alone.loss"] = loss.detach().reshape(1)
    for p in named.values():
        p.grad = None
    parallel = distributed.DataParallel(distributed.answer_weight(model.tokenizer, tcfg.max_answer_tokens))
    part_loss, tokens = parallel.wrap(model.loss)(batch)
    part_loss.backward()
    loss, _ = parallel.sync(named, {id(model.user_state.weight)}, part_loss, tokens)
    out.update({f"ranks.{n}": p.grad.clone() for n, p in named.items()})
    out["ranks.loss"] = loss.detach().reshape(1)
    return out


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        save_file(_gradient_check(), str(Path(out) / f"grads{rank}.safetensors"))
        weights = _trained_weights(Path(out) / "run")
        save_file(weights, str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_what_one_process_trains(tmp_path):
    """2 gloo processes (spawned as torchrun would start them) against 1 process, same global batch of 4.

    1. One stage-2 step's gradient (LoRA, P_q, user rows; answers of different lengths, one user in both
       ranks' slices): the summed, token-weighted gradient on each rank equals the whole batch's gradient in one
       process within 1e-5 of each tensor's largest entry (+1e-9), and the loss within 1e-5 relative. Not bitwise: each
       rank pads its slice to its own longest row and adds its fp32 terms in another order (seen: ~1e-6).
       Checked by breaking the code: averaging the ranks' mean losses (DDP's rule) instead of weighting by
       answer tokens moved the gradients by 1-2% (a thousand times this tolerance), sending only this rank's
       user rows left the other rank's rows' gradients 100% off.
    2. Stage 1 then stage 2, 4 steps each (lr 1e-2, Adam): both ranks hold bitwise the same weights, and they
       match 1 process within atol 5e-4 (every group moved by more than 1e-2). Adam divides each gradient
       entry by its own running scale, so an entry whose gradient is near zero turns last-bit differences into
       visible ones (seen: up to 7e-5). The two mistakes above moved the final weights by 4e-2 and 3e-2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = _trained_weights(tmp_path / "one" / "run")
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    two.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(two)), nprocs=2, join=True)

    for rank in (0, 1):
        grads = load_file(str(two / f"grads{rank}.safetensors"))
        assert torch.allclose(grads["ranks.loss"], grads["alone.loss"], rtol=1e-5, atol=0)
        for key in grads:
            if key.startswith("alone.") and key != "alone.loss":
                want, got = grads[key], grads["ranks." + key.removeprefix("alone.")]
                # atol 1e-9: some entries' true gradient is zero (softmax ignores the scorer's last bias)
                assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()) + 1e-9, key
        assert float(grads["alone.user_state.weight"].abs().max()) > 1e-4  # the rows' check is not empty

    rank0, rank1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    assert set(rank0) == set(alone)
    for name in alone:
        assert torch.equal(rank0[name], rank1[name]), f"{name}: the ranks drifted apart"
        assert torch.allclose(rank0[name], alone[name], rtol=0, atol=5e-4), (
            name, float((rank0[name] - alone[name]).abs().max()))
    start = tiny_run_start()
    for group in ("user_state", "query_prefix.proj", "lm."):
        moved = max(float((alone[n] - start[n]).abs().max()) for n in start if n.startswith(group))
        assert moved > 1e-2, (group, moved)
    # What rank 0 saved is what the ranks trained; no checkpoint is left behind.
    saved = load_file(str(two / "run" / "user_state" / "user_state.safetensors"))
    assert torch.equal(saved["rows"], rank0["user_state"])
    assert not (two / "run" / "checkpoints").exists() or not any((two / "run" / "checkpoints").iterdir())


def tiny_run_start() -> dict[str, torch.Tensor]:
    """Stage 2's starting weights by name (user rows and P_q before any step; the bridge's LoRA B is zero)."""
    from tapper.prefix import TapperModel

    tcfg, cfg = _configs()
    torch.manual_seed(cfg.seed)
    return _named(TapperModel(tiny_backbone(seed=0), tcfg, [f"user{u}" for u in range(10, 15)]))


def test_answer_weight_counts_what_the_loss_averages_over(tiny_backbone):
    tok = tiny_backbone.tokenizer
    batch = [Example(user_id="u", query="q", prompt="p", answer=a)
             for a in (["a b c", "", "a much longer answer than the budget allows"])]
    counted = distributed.answer_weight(tok, 5)(batch)
    encoded = encode_train(tok, [e.prompt for e in batch], [e.answer for e in batch], 5)
    assert counted == encoded.answer_tokens


def test_slices_cover_the_batch_once():
    batch = list(range(7))
    for world in (1, 2, 3, 8):
        parts = [distributed.local_slice(batch, r, world) for r in range(world)]
        assert [x for part in parts for x in part] == batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shards_are_stable_and_disjoint():
    users = [f"user{i}" for i in range(200)]
    owners = [distributed.shard_of(u, 4) for u in users]
    assert owners == [distributed.shard_of(u, 4) for u in users]
    assert set(owners) == {0, 1, 2, 3}
    assert distributed.shard_of("user7", 4) == 0  # sha256-based: the same on every machine and Python run
    assert distributed.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            distributed.parse_shard(bad)


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") == "cpu"
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.data_parallel(lambda b: len(b)) is None
    assert distributed.mine("anyone")
