"""bench/prefix_position.py: each way scores the prompt's and the answer's own tokens, wherever the prefix sits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from prefix_position import WAYS, nll_by_way  # noqa: E402


def reference_nll(model, ids: list[int], scored: range) -> float:
    """Mean NLL of ids[j] for j in scored, from a plain forward pass over token ids."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(np.mean([-float(logp[j - 1, ids[j]]) for j in scored]))


def test_a_prefix_of_real_tokens_scores_as_those_tokens_in_the_text(tiny_backbone):
    model = tiny_backbone.model.eval()
    prompt, answer, extra = [5, 9, 14, 3, 22, 7], [11, 4], [30, 31, 32]
    with torch.no_grad():
        prefix = model.get_input_embeddings()(torch.tensor(extra)).float()
    got = nll_by_way(model, prompt, answer, prefix)
    assert list(got) == list(WAYS)
    n, k = len(prompt), len(extra)
    # no prefix: prompt tokens 3.. and the answer, read from the plain text
    assert got[WAYS[0]] == pytest.approx((reference_nll(model, prompt + answer, range(2, n)),
                                          reference_nll(model, prompt + answer, range(n, n + 2))), abs=1e-4)
    # before the first token: the same as if those tokens began the text; the scored tokens shift by k
    text = extra + prompt + answer
    assert got[WAYS[1]] == pytest.approx((reference_nll(model, text, range(k + 2, k + n)),
                                          reference_nll(model, text, range(k + n, k + n + 2))), abs=1e-4)
    # after the first token
    text = prompt[:1] + extra + prompt[1:] + answer
    assert got[WAYS[2]] == pytest.approx((reference_nll(model, text, range(k + 2, k + n)),
                                          reference_nll(model, text, range(k + n, k + n + 2))), abs=1e-4)
    assert got[WAYS[1]] != got[WAYS[0]]  # the prefix is read
