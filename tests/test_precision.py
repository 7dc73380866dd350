"""tapper.precision: dtype choice, bf16 frozen weights restored bit for bit, float32 masters and optimiser
states, merges in float32, the loss's head slicing, and the thread default."""

from __future__ import annotations

import pytest
import torch

from tapper import precision
from tapper.backbone import tiny_backbone
from tapper.batching import IGNORE, answer_loss, encode_train, with_prefix
from tapper.lora import add_lora
from tapper.train_loop import LoopConfig, train

BF16 = torch.bfloat16


def test_resolve_dtype_explicit_auto_and_errors(monkeypatch):
    assert precision.resolve_dtype("fp32") == torch.float32
    assert precision.resolve_dtype("bf16") == BF16
    assert precision.resolve_dtype(None) == torch.float32
    assert precision.resolve_dtype(BF16) == BF16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_dtype("auto", "cpu") == BF16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_dtype("auto", "cpu") == torch.float32  # a CPU without bf16 runs as before
    with pytest.raises(ValueError, match="dtype must be one of"):
        precision.resolve_dtype("fp16")
    with pytest.raises(ValueError):
        precision.resolve_dtype(torch.float16)


def test_frozen_weights_are_held_in_bf16_and_restored_bit_for_bit():
    model = tiny_backbone(seed=1).model
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = add_lora(model, 4, 8, 0.0)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    with precision.frozen_weights_in(peft_model, BF16) as n_cast:
        assert n_cast > 0
        for n, p in peft_model.named_parameters():
            assert p.dtype == (torch.float32 if "lora_" in n else BF16), n
    for n, p in peft_model.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, before[n]), n
    with precision.frozen_weights_in(peft_model, torch.float32) as n_cast:  # fp32: nothing happens
        assert n_cast == 0


def _lora_training(dtype: str, steps: int = 6):
    bb = tiny_backbone(seed=2)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    torch.manual_seed(0)
    peft_model = add_lora(bb.model, 4, 8, 0.0)
    with torch.no_grad():  # a nonzero B so that the adapter's product (and its merge) is visible at once
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    tok = bb.tokenizer
    pairs = [(bb.format_prompt(f"rate item {i}" + " good" * (i % 5)), str(1 + i % 5)) for i in range(16)]
    seen: list[torch.dtype] = []

    def loss_fn(batch):
        seen.append(peft_model.get_input_embeddings().weight.dtype)
        return answer_loss(peft_model, tok, [p for p, _ in batch], [a for _, a in batch], 4)

    cfg = LoopConfig(lr=1e-2, max_steps=steps, batch_size=4, dtype=dtype, show_progress=False)
    result = train(peft_model, pairs, loss_fn, cfg)
    return bb, peft_model, frozen, result, seen


def test_bf16_training_keeps_masters_in_fp32_and_restores_frozen_weights():
    bb, peft_model, frozen, result, seen = _lora_training("bf16")
    assert set(seen) == {BF16}  # the frozen weights ran in bf16 during training
    assert result.final_loss == result.final_loss  # not NaN
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    for n, p in peft_model.get_base_model().named_parameters():
        if "lora_" not in n:
            key = n.replace("base_layer.", "")
            assert p.dtype == torch.float32 and torch.equal(p, frozen[key]), n
    # The adapter is merged into the float32 weights: the merge is exact to float32, not rounded to bf16.
    delta = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            delta[name.replace("base_model.model.", "")] = module.get_delta_weight("default").detach().clone()
    merged = peft_model.merge_and_unload()
    assert delta
    for name, d in delta.items():
        w = dict(merged.named_parameters())[f"{name}.weight"]
        assert w.dtype == torch.float32
        torch.testing.assert_close(w, frozen[f"{name}.weight"] + d, rtol=0, atol=1e-6)


def test_bf16_training_follows_fp32_training():
    *_, r32, _ = _lora_training("fp32")
    *_, r16, _ = _lora_training("bf16")
    assert abs(r32.mean_loss - r16.mean_loss) < 0.05 * r32.mean_loss


def test_optimizer_states_stay_fp32_under_bf16():
    from torch import nn

    table = nn.Module()
    table.weight = nn.Parameter(torch.zeros(2, 3))
    table.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    seen = []

    def loss_fn(batch):
        seen.append((table.frozen.dtype, torch.is_autocast_enabled("cpu")))
        return ((table.weight[batch] * table.frozen - 1) ** 2).sum(), len(batch)

    captured = {}

    def on_step(step, steps, loss):
        captured["dtype"] = table.weight.dtype

    train(table, [0, 1], loss_fn, LoopConfig(lr=0.1, max_steps=2, batch_size=1, dtype="bf16", show_progress=False),
          on_step=on_step)
    assert seen == [(BF16, True)] * 2
    assert captured["dtype"] == torch.float32 and table.frozen.dtype == torch.float32


def test_answer_loss_equals_the_full_logits_loss():
    """Only the scored positions go through the head; the mean is the same as HF's loss over all positions."""
    bb = tiny_backbone(seed=3)
    tok = bb.tokenizer
    prompts = [bb.format_prompt("a"), bb.format_prompt("a much longer prompt than the first"), bb.format_prompt("b")]
    answers = ["5", "three tokens here", "1"]
    prefix = torch.randn(3, 2, bb.hidden_size) * 0.1
    with torch.no_grad():
        loss, tokens = answer_loss(bb.model, tok, prompts, answers, 8, prefix)
        batch = encode_train(tok, prompts, answers, 8)
        embeds = bb.model.get_input_embeddings()(batch.input_ids)
        embeds, mask, labels = with_prefix(embeds, batch.attention_mask, prefix, batch.labels)
        reference = bb.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    assert tokens == batch.tokens + 6
    assert int((labels != IGNORE).sum()) == batch.answer_tokens


def test_generation_runs_with_bf16_weights_and_fp32_prefixes():
    from tapper.generate import generate_batch

    bb32 = tiny_backbone(seed=4)
    bb16 = tiny_backbone(seed=4)
    assert precision.cast_frozen(bb16.model, BF16) == 0  # trainable weights are never cast
    for p in bb16.model.parameters():
        p.requires_grad_(False)
    precision.cast_frozen(bb16.model, BF16)
    assert bb16.model.get_input_embeddings().weight.dtype == BF16
    prompts = [bb32.format_prompt("hello"), bb32.format_prompt("a longer prompt")]
    prefix = torch.randn(2, 2, bb32.hidden_size) * 0.1
    out32 = generate_batch(bb32.model, bb32.tokenizer, prompts, prefix, max_new_tokens=3, stop_at_newline=False)
    out16 = generate_batch(bb16.model, bb16.tokenizer, prompts, prefix, max_new_tokens=3, stop_at_newline=False)
    assert len(out16) == len(out32) == 2 and all(isinstance(t, str) for t in out16)
    assert bb32.model.get_input_embeddings().weight.dtype == torch.float32


def test_thread_default(monkeypatch):
    monkeypatch.setattr(precision, "_default_threads", lambda: 6)
    assert precision.resolve_threads(3) == 3
    assert precision.resolve_threads(0, model_params=1_000_000) == 1  # tiny models: one thread
    assert precision.resolve_threads(None, model_params=135_000_000) == 6
    assert precision.resolve_threads(0) == 6
    with pytest.raises(ValueError):
        precision.resolve_threads(-1)
    before = torch.get_num_threads()
    try:
        assert precision.set_threads(0, tiny_backbone().model) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_engine_serves_and_onboards_in_bf16(tmp_path):
    """The served path with the backbone held in bf16: P_q reads bf16 embeddings under autocast, a fitted row
    stays float32, and the answers come back."""
    from tapper.data.records import ProfileItem
    from tapper.engine import GenerationRequest, TapperEngine
    from tapper.train import init_run

    run = init_run(tmp_path / "run", backbone="tiny", task="LaMP_3")
    engine = TapperEngine.from_pretrained(run, dtype="bf16")
    assert engine.model.hf_model.get_input_embeddings().weight.dtype == BF16
    assert engine.model.query_prefix.proj.weight.dtype == torch.float32
    history = [ProfileItem(id=f"r{i}", fields={"text": f"review {i}", "score": str(1 + i % 5)}, day=float(i),
                           position=i)
               for i in range(4)]
    row = engine.fit_user_row(history, steps=2)
    assert row.dtype == torch.float32 and torch.isfinite(row).all()
    out = engine.generate([GenerationRequest("u", "What is the score of this review? review: fine", history, row)],
                          max_new_tokens=2)
    assert len(out) == 1 and isinstance(out[0].raw, str)
