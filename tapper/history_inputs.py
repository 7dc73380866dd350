"""Inputs for history records whose task template would contain the answer.

A LaMP-7 query asks to paraphrase a neutral rewrite of a tweet into the user's own words; a history tweet
replayed with the template ("paraphrase: <the tweet>" -> the tweet) only teaches copying, and copying
needs no personalization. LaMP built its inputs by having an LLM rewrite the user's tweets; we do the same
with the backbone itself, zero-shot and offline, cached on disk, so each history pair becomes
(neutral rewrite -> the user's original wording): the mapping the task actually scores.

A 135M backbone often answers with a refusal, a loop or a verbatim copy instead of a rewrite (on 300
LaMP-7 history tweets, 40% of its rewrites shared under 30% of their words with the tweet). Those would
teach the wrong mapping, so a rewrite is kept only if its ROUGE-1 F against the tweet lies in
[min_overlap, max_overlap] (LaMP's own inputs mostly lie in 0.3-0.8), and the latest `candidates`
records are tried so that most users still get `max_pairs` pairs. Rejected records are counted, and a
record without a kept rewrite is not replayed (its template would contain its answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from tapper.backbone import Backbone
from tapper.data.records import LampSplit, ProfileItem
from tapper.data.tasks import Task
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_text, one_cache_writer
from tapper.log_lines import log_written

log = logging.getLogger(__name__)

REWRITE_BATCHES_PER_SAVE = 8  # the cache file is rewritten after this many batches
REWRITE_INSTRUCTION = "Rewrite the following tweet in plain, neutral words, without any explanation: "


def rewrite_history_inputs(
    backbone: Backbone,
    task: Task,
    split: LampSplit,
    max_pairs: int | None,
    cache_path: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 40,
    candidates: int | None = None,
    min_overlap: float = 0.3,
    max_overlap: float = 0.9,
) -> dict[str, str]:
    """{history record id: task input built from a backbone rewrite of the record's text}, for at most
    max_pairs records per user: the latest of the last `candidates` (default 2 * max_pairs) whose rewrite
    passes the overlap filter. Rewrites are cached by (backbone, record text)."""
    if candidates is None and max_pairs is not None:
        candidates = 2 * max_pairs
    texts: dict[str, str] = {}  # cache key -> text
    wanted: dict[str, list[tuple[str, str, str]]] = {}  # question id -> [(record id, cache key, text)]
    for q in split.questions:
        items = q.profile if candidates is None else q.profile[-candidates:]
        for item in items:
            key = hashlib.sha256(f"{backbone.name}\n{item.text}".encode()).hexdigest()[:24]
            wanted.setdefault(q.id, []).append((item.id, key, item.text))
            texts[key] = item.text
    cache = _rewrite_missing(backbone, texts, Path(cache_path) if cache_path else None, batch_size, max_new_tokens)
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    out: dict[str, str] = {}
    rejected = 0
    def overlap(text: str, rewrite: str) -> float:
        return scorer.score(text, rewrite)["rouge1"].fmeasure if rewrite else 0.0

    for records in wanted.values():
        kept = [(rid, cache[key]) for rid, key, text in records
                if min_overlap <= overlap(text, cache[key]) <= max_overlap]
        rejected += len(records) - len(kept)
        # The replayed query is the task's own instruction around the rewrite, like a real LaMP-7 input.
        out.update((rid, _as_task_input(task, rewrite)) for rid, rewrite in kept[-max_pairs if max_pairs else 0:])
    log.warning("history rewrites: %d kept, %d rejected by the overlap filter [%.2f, %.2f]",
                len(out), rejected, min_overlap, max_overlap)
    return out


def _rewrite_missing(backbone: Backbone, texts: dict[str, str], cache_file: Path | None, batch_size: int,
                     max_new_tokens: int) -> dict[str, str]:
    """The cache (key -> rewrite) holding a rewrite of every text in `texts`. One process at a time fills a
    cache file: a second one asking for the same rewrites waits, then reads them instead of writing them too."""
    with one_cache_writer(cache_file, "history rewrites"):
        cache: dict[str, str] = {}
        if cache_file and cache_file.exists():
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
        keys = [k for k in texts if k not in cache]
        began = time.perf_counter()
        for n, start in enumerate(tqdm(range(0, len(keys), batch_size), desc="rewrite history", leave=False,
                                       disable=None), 1):
            chunk = keys[start:start + batch_size]
            prompts = [backbone.format_prompt(REWRITE_INSTRUCTION + texts[k]) for k in chunk]
            for k, text in zip(chunk, generate_batch(backbone.model, backbone.tokenizer, prompts, None,
                                                     max_new_tokens), strict=True):
                cache[k] = text.strip()
            # 300 LaMP-7 users take 35 min on one core: a killed run keeps the rewrites written so far
            if n % REWRITE_BATCHES_PER_SAVE == 0 or start + batch_size >= len(keys):
                if cache_file:
                    atomic_write_text(cache_file, json.dumps(cache, ensure_ascii=False, indent=1) + "\n")
                log_written(log, "history rewrites", min(start + batch_size, len(keys)), len(keys), began)
    return cache


def _as_task_input(task: Task, rewritten: str) -> str:
    return task.history_input(ProfileItem(id="", fields={"text": rewritten}, day=None, position=0))
