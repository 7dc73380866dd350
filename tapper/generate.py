"""Batched greedy generation from inputs_embeds: one prefix per row, KV cache on, many users per pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tapper.batching import encode_prompts_left, with_prefix
from tapper.precision import run_context

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


class AnswerSet:
    """A closed set of answers (a task's labels) as a token trie: at each step, a row may only continue one
    of the answers it has started, and may stop only once an answer is complete. Answers are tokenized as
    training tokenizes them (alone, no special tokens), so the constraint follows what the model learned."""

    _END = -1

    def __init__(self, tokenizer, answers: Sequence[str], stop_ids: Sequence[int]):
        if not answers:
            raise ValueError("AnswerSet needs at least one answer")
        self.trie: dict = {}
        for answer in answers:
            node = self.trie
            for t in tokenizer(answer, add_special_tokens=False)["input_ids"]:
                node = node.setdefault(t, {})
            node[self._END] = True
        self.longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        self.stop_ids = list(stop_ids)
        self.pad = tokenizer.pad_token_id

    def allowed(self, generated: list[int]) -> list[int]:
        node = self.trie
        for t in generated:
            if t in self.stop_ids or t == self.pad:  # finished: generate pads it from here on
                return [self.pad, *self.stop_ids]
            node = node.get(t)
            if node is None:  # cannot happen under the constraint; never leave a row with no legal token
                return [self.pad, *self.stop_ids]
        return [t for t in node if t != self._END] + (self.stop_ids if self._END in node else [])


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    prefix: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    stop_at_newline: bool = True,
    answers: Sequence[str] | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy continuation of each formatted prompt, `prefix[r]` (L, d) prepended to row r's prompt.
    With `answers` (a closed-label task's labels), each row decodes greedily within that set. Extra keyword
    arguments go to `model.generate` (e.g. peft's per-row `adapter_names`)."""
    if not prompts:
        return []
    device = model.get_input_embeddings().weight.device
    input_ids, mask = encode_prompts_left(tokenizer, prompts)
    input_ids, mask = input_ids.to(device), mask.to(device)
    embeds = model.get_input_embeddings()(input_ids)
    embeds, mask, _ = with_prefix(embeds, mask, None if prefix is None else prefix.to(device), left_padded=True)
    stop = line_stop_ids(tokenizer) if stop_at_newline else [tokenizer.eos_token_id]
    constrain = None
    if answers:
        answer_set = AnswerSet(tokenizer, answers, [tokenizer.eos_token_id])
        max_new_tokens = max(max_new_tokens, answer_set.longest + 1)  # room for every label, then the stop

        def constrain(_row: int, generated: torch.Tensor) -> list[int]:
            # From inputs_embeds alone, `generated` holds only the new tokens.
            return answer_set.allowed(generated.tolist())
    with run_context(model):  # bf16 autocast when the weights are held in bf16 (tapper.precision)
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            prefix_allowed_tokens_fn=constrain,
            **generate_kwargs,
        )
    # From inputs_embeds alone, decoder-only generate returns just the new tokens.
    return tokenizer.batch_decode(out, skip_special_tokens=True)
