"""PAG: RAG plus a short profile summary of the user, written by the backbone offline and cached.

The summary reads the user's most recent records (rendered with the task's record template) and is
generated once per (user, history): the cache is a JSON file keyed by user id + a hash of the history
and of the summarizer, so a user whose history grows gets a new summary and nothing stale is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tapper.backbone import Backbone
from tapper.baselines.common import load_config, save_config, truncate_record
from tapper.baselines.rag import RagBaseline, RagConfig
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.examples import Example
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_text

log = logging.getLogger(__name__)
SUMMARIES_NAME = "profile_summaries.json"
SUMMARY_PROMPT_VERSION = 1  # bump when the prompt below changes: old cache entries then miss


@dataclass
class PagConfig(RagConfig):
    summary_records: int = 12  # most recent records the summary reads
    summary_record_tokens: int = 32
    summary_tokens: int = 48
    summary_batch_size: int = 8


def summary_prompt(records: list[str]) -> str:
    lines = "\n".join(f"- {r}" for r in records)
    return (f"Here are past records of one user:\n{lines}\n"
            "In one or two short sentences, describe this user's interests, preferences and writing style.")


def history_hash(history: list[ProfileItem], summarizer: str) -> str:
    payload = json.dumps([SUMMARY_PROMPT_VERSION, summarizer, [[p.id, p.fields] for p in history]],
                         sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class PagBaseline(RagBaseline):
    name = "PAG"
    config_class = PagConfig

    def __init__(self, backbone: Backbone, config: PagConfig, summarizer: Backbone | None = None,
                 cache_path: str | Path | None = None):
        """`summarizer` writes the summaries (default: the backbone itself; the untuned backbone summarizes
        better than one tuned to emit task answers). `cache_path`: the JSON cache (None: in memory)."""
        super().__init__(backbone, config)
        self.config: PagConfig = config
        self.summarizer = summarizer or backbone
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache: dict[str, str] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self.cache = json.loads(self.cache_path.read_text(encoding="utf-8"))
        self.by_user: dict[str, str] = {}
        self.generated = 0  # summaries written by this instance (cache misses)

    def cache_key(self, user_id: str, history: list[ProfileItem]) -> str:
        return f"{user_id}|{history_hash(history, self.summarizer.name)}"

    def fit(self, target: LampSplit) -> None:
        """Summaries for every target user (from the cache where possible)."""
        self.summarize(target.questions)

    def summarize(self, questions: list[Question]) -> dict[str, str]:
        todo: dict[str, Question] = {}
        for q in questions:
            key = self.cache_key(q.user_id, q.profile)
            if key in self.cache:
                self.by_user[q.user_id] = self.cache[key]
            else:
                todo[key] = q
        keys = list(todo)
        cfg = self.config
        for start in range(0, len(keys), cfg.summary_batch_size):
            chunk = keys[start:start + cfg.summary_batch_size]
            prompts = [self.summarizer.format_prompt(self._summary_input(todo[k].profile)) for k in chunk]
            texts = generate_batch(self.summarizer.model, self.summarizer.tokenizer, prompts, None,
                                   cfg.summary_tokens)
            for key, text in zip(chunk, texts, strict=True):
                self.cache[key] = text.strip()
                self.by_user[todo[key].user_id] = self.cache[key]
        self.generated += len(keys)
        if keys:
            log.info("PAG: wrote %d profile summaries (%d from the cache)", len(keys), len(questions) - len(keys))
            self._write_cache()
        return self.by_user

    def _summary_input(self, history: list[ProfileItem]) -> str:
        tok = self.summarizer.tokenizer
        recent = history[-self.config.summary_records:]
        return summary_prompt([self.task.record_prompt(truncate_record(r, tok, self.config.summary_record_tokens))
                               for r in recent])

    def _write_cache(self) -> None:
        if self.cache_path is not None:
            atomic_write_text(self.cache_path, json.dumps(self.cache, ensure_ascii=False, indent=1) + "\n")

    def profile_text(self, example: Example) -> str:
        summary = self.by_user.get(example.user_id, "")
        return f"User profile: {summary}\n" if summary else ""

    def question_examples(self, split: LampSplit) -> list[Example]:
        self.summarize(split.questions)
        return super().question_examples(split)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_config(self.config, self.name, directory)
        atomic_write_text(directory / SUMMARIES_NAME, json.dumps(self.cache, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone, summarizer: Backbone | None = None):
        directory = Path(directory)
        config = load_config(PagConfig, cls.name, directory)
        return cls(backbone, config, summarizer, cache_path=directory / SUMMARIES_NAME)
