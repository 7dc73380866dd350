"""Batched greedy generation from inputs_embeds: one prefix per row, KV cache on, many users per pass."""

from __future__ import annotations

import torch

from tapper.batching import encode_prompts_left, with_prefix

_STOP_IDS: dict[int, list[int]] = {}


def line_stop_ids(tokenizer) -> list[int]:
    """EOS plus every token whose text holds a newline: LaMP answers are one line, and a small model
    otherwise rambles on past the answer (and pays for every extra token)."""
    key = id(tokenizer)
    if key not in _STOP_IDS:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        ids = {i for i, t in enumerate(texts) if "\n" in t}
        ids.add(tokenizer.eos_token_id)
        _STOP_IDS[key] = sorted(ids)
    return _STOP_IDS[key]


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    prefix: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
) -> list[str]:
    """Greedy continuation of each formatted prompt, `prefix[r]` (L, d) prepended to row r's prompt."""
    if not prompts:
        return []
    device = model.get_input_embeddings().weight.device
    input_ids, mask = encode_prompts_left(tokenizer, prompts)
    input_ids, mask = input_ids.to(device), mask.to(device)
    embeds = model.get_input_embeddings()(input_ids)
    embeds, mask, _ = with_prefix(embeds, mask, None if prefix is None else prefix.to(device), left_padded=True)
    stop = line_stop_ids(tokenizer) if stop_at_newline else [tokenizer.eos_token_id]
    out = model.generate(
        inputs_embeds=embeds,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stop,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    # From inputs_embeds alone, decoder-only generate returns just the new tokens.
    return tokenizer.batch_decode(out, skip_special_tokens=True)
