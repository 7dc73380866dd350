"""Inputs for history records whose task template would contain the answer.

A LaMP-7 query asks to paraphrase a neutral rewrite of a tweet into the user's own words; a history tweet
replayed with the template ("paraphrase: <the tweet>" -> the tweet) only teaches copying, and copying
needs no personalization. LaMP built its inputs by having an LLM rewrite the user's tweets; we do the same
with the backbone itself, zero-shot and offline, cached on disk, so each history pair becomes
(neutral rewrite -> the user's original wording): the mapping the task actually scores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm.auto import tqdm

from tapper.backbone import Backbone
from tapper.data.records import LampSplit, ProfileItem
from tapper.data.tasks import Task
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_text

REWRITE_INSTRUCTION = "Rewrite the following tweet in plain, neutral words, without any explanation: "


def rewrite_history_inputs(
    backbone: Backbone,
    task: Task,
    split: LampSplit,
    max_pairs: int | None,
    cache_path: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 40,
) -> dict[str, str]:
    """{history record id: task input built from a backbone rewrite of the record's text}, for the records
    that stage 2 replays (each user's latest max_pairs). Cached by (backbone, record text)."""
    cache: dict[str, str] = {}
    cache_file = Path(cache_path) if cache_path else None
    if cache_file and cache_file.exists():
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    todo: dict[str, str] = {}  # cache key -> text
    wanted: dict[str, str] = {}  # record id -> cache key
    for q in split.questions:
        items = q.profile if max_pairs is None else q.profile[-max_pairs:]
        for item in items:
            key = hashlib.sha256(f"{backbone.name}\n{item.text}".encode()).hexdigest()[:24]
            wanted[item.id] = key
            if key not in cache:
                todo[key] = item.text
    keys = list(todo)
    for start in tqdm(range(0, len(keys), batch_size), desc="rewrite history", leave=False):
        chunk = keys[start:start + batch_size]
        prompts = [backbone.format_prompt(REWRITE_INSTRUCTION + todo[k]) for k in chunk]
        for k, text in zip(chunk, generate_batch(backbone.model, backbone.tokenizer, prompts, None, max_new_tokens),
                           strict=True):
            cache[k] = text.strip() or todo[k]  # an empty rewrite falls back to the original text
    if cache_file and keys:
        atomic_write_text(cache_file, json.dumps(cache, ensure_ascii=False, indent=1) + "\n")
    # The replayed query is the task's own instruction around the rewrite, like a real LaMP-7 input.
    return {rid: _as_task_input(task, cache[key]) for rid, key in wanted.items()}


def _as_task_input(task: Task, rewritten: str) -> str:
    return task.history_input(ProfileItem(id="", fields={"text": rewritten}, day=None, position=0))
