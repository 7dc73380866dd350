"""Tokenizing prompts and answers for a prefix-carrying causal LM.

Training rows are right-padded: [prefix][prompt][answer][eos][pad...], loss on answer + eos only.
Generation rows are left-padded: [pad...][prefix][prompt], so every row's last position is its own.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

IGNORE = -100


def truncate_text(tokenizer, text: str, max_tokens: int) -> str:
    """Cut raw text to its first max_tokens tokens (before any template is applied)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE outside the answers
    answer_tokens: int
    tokens: int  # every real (non-pad) token: what throughput is measured in


def answer_token_count(tokenizer, answer: str | None, max_answer_tokens: int | None) -> int:
    """The tokens encode_train gives an answer: cut to max_answer_tokens (None: whole), plus its eos."""
    return len(tokenizer(answer or "", add_special_tokens=False)["input_ids"][:max_answer_tokens]) + 1


def encode_train(tokenizer, prompts: list[str], answers: list[str], max_answer_tokens: int) -> TrainBatch:
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens] + [tokenizer.eos_token_id]
        rows.append((p + a, [IGNORE] * len(p) + a))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(ids)] = 1
    return TrainBatch(input_ids, mask, labels, int((labels != IGNORE).sum()), int(mask.sum()))


def encode_prompts_left(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, ids in enumerate(encoded):
        if ids:
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            mask[r, width - len(ids):] = 1
    return input_ids, mask


def with_prefix(
    token_embeds: torch.Tensor,  # (B, T, d)
    mask: torch.Tensor,  # (B, T)
    prefix: torch.Tensor | None,  # (B, L, d)
    labels: torch.Tensor | None = None,
    left_padded: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prepend a per-row prefix to the embeddings; extend mask (ones) and labels (ignored).

    With left padding the prefix goes after each row's pads, right before its prompt, so that a row in a
    mixed batch sees exactly what it would see alone."""
    if prefix is None or prefix.shape[1] == 0:
        return token_embeds, mask, labels
    b, length = prefix.shape[:2]
    ones = torch.ones((b, length), dtype=mask.dtype, device=mask.device)
    if not left_padded:
        embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)
        new_mask = torch.cat([ones, mask], dim=1)
        new_labels = None
        if labels is not None:
            ignore = torch.full((b, length), IGNORE, dtype=labels.dtype, device=labels.device)
            new_labels = torch.cat([ignore, labels], dim=1)
        return embeds, new_mask, new_labels
    rows, masks = [], []
    width = token_embeds.shape[1]
    for r in range(b):
        n_pad = int(width - mask[r].sum())
        rows.append(torch.cat([token_embeds[r, :n_pad], prefix[r].to(token_embeds.dtype), token_embeds[r, n_pad:]]))
        masks.append(torch.cat([mask[r, :n_pad], ones[r], mask[r, n_pad:]]))
    return torch.stack(rows), torch.stack(masks), None


def answer_loss(
    lm, tokenizer, prompts: list[str], answers: list[str], max_answer_tokens: int,
    prefix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """(mean next-token cross-entropy over the answer tokens + eos, tokens processed), with an optional
    per-row prefix. `lm` is any HF causal LM (or peft wrapper); prompt and prefix positions carry no loss.

    Only the positions that predict an answer token go through the LM head: with a 49k-token vocabulary the
    head is a fifth of a small model's compute, and the prompt and padding positions need none of it."""
    batch = encode_train(tokenizer, prompts, answers, max_answer_tokens)
    device = lm.get_input_embeddings().weight.device
    ids, mask, labels = (t.to(device) for t in (batch.input_ids, batch.attention_mask, batch.labels))
    embeds = lm.get_input_embeddings()(ids)
    embeds, mask, labels = with_prefix(embeds, mask, prefix, labels)
    tokens = batch.tokens + (0 if prefix is None else prefix.shape[0] * prefix.shape[1])
    if not _supports_logits_to_keep(lm):
        return lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss, tokens
    # Position p predicts token p + 1: only positions whose next token is scored go through the head.
    scored = labels[:, 1:] != IGNORE
    if _boolean_keep_supported():
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = scored
        logits = lm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits  # (scored, V)
        targets = labels[:, 1:][scored]
    else:  # older transformers: the columns from the batch's first scored position on
        first = int(scored.any(dim=0).nonzero()[0]) if scored.any() else labels.shape[1] - 2
        # An index tensor, not an int: the int form slices the hidden states into a non-contiguous view, and
        # matmul then copies the whole head weight once per row (measured: 2x slower steps in bf16).
        positions = torch.arange(first, labels.shape[1] - 1, device=labels.device)
        logits = lm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=positions).logits
        targets = labels[:, positions + 1]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE
    )
    return loss, tokens


def _supports_logits_to_keep(lm) -> bool:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@functools.cache
def _boolean_keep_supported() -> bool:
    """Whether this transformers takes a (B, T) boolean `logits_to_keep` (newer versions do)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    try:
        kept = slice_logits_to_keep(torch.zeros(1, 2, 1), torch.tensor([[True, False]]))
    except (TypeError, IndexError, RuntimeError):
        return False
    return tuple(kept.shape) == (1, 1)
