"""Batched greedy generation: closed-label decoding stays inside the label set."""

from __future__ import annotations

import pytest
import torch

from tapper.backbone import tiny_backbone
from tapper.data.tasks import get_task
from tapper.generate import AnswerSet, generate_batch


@pytest.mark.parametrize("task", ["LaMP_3", "LaMP_2N"])
def test_constrained_generation_answers_only_with_labels(task):
    bb = tiny_backbone(seed=0)
    labels = get_task(task).labels
    prompts = [bb.format_prompt(f"question {i} about something") for i in range(6)]
    free = generate_batch(bb.model, bb.tokenizer, prompts, None, max_new_tokens=8)
    assert any(text.strip() not in labels for text in free)  # a random model rambles without the constraint
    prefix = torch.randn(len(prompts), 2, bb.hidden_size)
    for pre in (None, prefix):
        out = generate_batch(bb.model, bb.tokenizer, prompts, pre, max_new_tokens=8, answers=labels)
        assert all(text.strip() in labels for text in out), out


def test_answer_set_walks_the_trie():
    bb = tiny_backbone(seed=0)
    tok = bb.tokenizer
    answers = ["food", "food & drink", "sports"]
    s = AnswerSet(tok, answers, [tok.eos_token_id])
    first = {tok(a, add_special_tokens=False)["input_ids"][0] for a in answers}
    assert set(s.allowed([])) == first
    food = tok("food", add_special_tokens=False)["input_ids"]
    after_food = s.allowed(food)
    assert tok.eos_token_id in after_food  # "food" is complete
    assert tok("food & drink", add_special_tokens=False)["input_ids"][len(food)] in after_food
    assert s.allowed([*food, tok.eos_token_id]) == [tok.pad_token_id, tok.eos_token_id]
