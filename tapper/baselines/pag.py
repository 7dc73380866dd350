"""PAG: RAG plus a short profile summary of the user, written by the backbone offline and cached, read by
a backbone fine-tuned on prompts of that form.

Follows Richardson et al. (2023), "Integrating summarization and retrieval for enhanced personalization"
(PAG: an LLM writes a summary of the user's profile offline; the prompt carries it before the retrieved
records), in the fine-tuned setting LaMP uses for RAG (see tapper.baselines.rag): the task LoRA is trained
like stage 1 on the other users' pairs (with `fine_tune_on_targets`, the target users' history pairs too), each
prompt carrying the summary of that pair's profile and the pair's records.

The summary reads the user's most recent records (rendered with the task's record template) and is
generated once per (user, history): the cache is a JSON file keyed by user id + a hash of the history
and of the summarizer, so a user whose history grows gets a new summary and nothing stale is reused.

Departs from the paper in: the summarizer is the untuned backbone by default (there: a much larger
instruction-tuned LLM). A base backbone (Gemma 3 270M) does not follow the instruction: it continues the list of
records it is shown (all 135 of its LaMP-2N summaries did), so PAG takes another summarizer when given one
(`bench/quality.py --pag-summarizer`, `tapper baseline pag --summarizer`), and warns when it has none with a
chat template. Each training pair's summary reads that pair's own profile, as each LaMP sample's does in the paper:
the records strictly before it (a stage-1 question: its whole profile; a replayed history pair: the records
before that one), so no training answer is ever inside its own prompt's summary, and it is the history the
pair's retrieved records come from. That is one generation per training pair (cached per user and history;
a killed run keeps the summaries written so far). A pair with no record before it has nothing to summarize
and gets no profile line, as RAG's prompt then has no records: asked to describe an empty list, the
summarizer invents one generic user (an earlier version summarized once per stage-1 user, the records
before the earliest pair: empty for 215 of LaMP-2N's 254 stage-1 users, 153 of Magazine's 248 and all 223 of
LaMP-2's, who then shared one invented summary or, after that was fixed, had none to learn from).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from tapper.backbone import Backbone
from tapper.baselines.common import load_config, save_config, truncate_record
from tapper.baselines.rag import RagBaseline, RagConfig
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.examples import Example
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_text, one_cache_writer
from tapper.log_lines import log_written

log = logging.getLogger(__name__)
SUMMARIES_NAME = "profile_summaries.json"
# Bump when the prompt below or how a summary is decoded changes: old cache entries then miss. 2: the summary
# is no longer cut at its first newline (a small summarizer often writes "Their interests are:" and then a
# list on the next lines; cut there, two thirds of LaMP-5R's summaries said nothing about the user).
SUMMARY_PROMPT_VERSION = 2
SUMMARY_BATCHES_PER_SAVE = 8  # the cache file is rewritten after this many batches


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


def one_line(text: str) -> str:
    """The summary as one line: it sits on a line of its own in the prompt ("User profile: ...")."""
    return " ".join(text.split())


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
        if not getattr(self.summarizer.tokenizer, "chat_template", None):
            log.warning("PAG: the summarizer %s has no chat template (a base model): it may continue the list of "
                        "records instead of describing the user; an instruction-tuned summarizer can be given "
                        "(bench/quality.py --pag-summarizer, tapper baseline pag --summarizer)", self.summarizer.name)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache: dict[str, str] = {}
        self._read_cache()
        self.by_user: dict[str, str] = {}
        self.generated = 0  # summaries written by this instance (cache misses)

    def cache_key(self, user_id: str, history: list[ProfileItem]) -> str:
        return f"{user_id}|{history_hash(history, self.summarizer.name)}"

    def fit(self, target: LampSplit) -> None:
        """Summaries for every target user (from the cache where possible)."""
        self.summarize(target.questions)

    def summarize(self, questions: list[Question]) -> dict[str, str]:
        """Each question's user summarized from that question's profile (user id -> summary)."""
        texts = self.summaries([(q.user_id, q.profile) for q in questions])
        for q, text in zip(questions, texts, strict=True):
            self.by_user[q.user_id] = text
        return self.by_user

    def summaries(self, histories: list[tuple[str, list[ProfileItem]]]) -> list[str]:
        """One summary per (user id, history), generated where the cache has none, in batches; "" (no summary,
        nothing generated) for an empty history."""
        keys = [self.cache_key(user_id, history) for user_id, history in histories]
        with one_cache_writer(self.cache_path, "PAG summaries"):
            self._read_cache()  # another process may have written summaries since this one started
            todo: dict[str, list[ProfileItem]] = {}
            for key, (_, history) in zip(keys, histories, strict=True):
                if history and key not in self.cache:
                    todo.setdefault(key, history)
            missing = list(todo)
            chunk = self.config.summary_batch_size * SUMMARY_BATCHES_PER_SAVE
            began = time.perf_counter()
            for start in tqdm(range(0, len(missing), chunk), desc="PAG summaries", unit="chunk",
                              leave=False, disable=None if len(missing) > chunk else True):
                done = missing[start:start + chunk]
                self.cache.update(zip(done, self.write_summaries(self.summary_prompts([todo[k] for k in done])),
                                      strict=True))
                self.generated += len(done)
                self._write_cache()  # a killed run keeps what it wrote
                log_written(log, "PAG summaries", start + len(done), len(missing), began)
        if missing:
            log.info("PAG: wrote %d profile summaries (%d from the cache)", len(missing), len(keys) - len(missing))
        return [self.cache[k] if history else "" for k, (_, history) in zip(keys, histories, strict=True)]

    def training_profiles(self, splits: Sequence[LampSplit], pairs: list[Example]) -> dict[str, str]:
        """Training pair id -> the summary line of that pair's own profile: a question's whole profile, a
        replayed history record's records before it (the ids ExampleBuilder gives them). `splits` hold the
        pairs' users (stage 1's, and the targets' when RAG is fine-tuned on their history pairs too)."""
        # pair id -> (user, profile, end): the pair's records are profile[:end], sliced for the pairs alone
        where: dict[str, tuple[str, list[ProfileItem], int]] = {}
        for split in splits:
            for q in split.questions:
                where[q.id] = (q.user_id, q.profile, len(q.profile))
                for i, item in enumerate(q.profile):
                    where[f"{q.user_id}/{item.id}"] = (q.user_id, q.profile, i)
        ids = [e.example_id for e in pairs]
        unknown = [i for i in ids if i not in where]
        if unknown:
            raise ValueError(f"PAG: {len(unknown)} training pairs match no question or history record of their "
                             f"users (e.g. {unknown[0]!r})")
        texts = self.summaries([(user_id, profile[:end]) for user_id, profile, end in (where[i] for i in ids)])
        return {i: self.profile_line(text) for i, text in zip(ids, texts, strict=True)}

    def summary_prompts(self, histories: list[list[ProfileItem]]) -> list[str]:
        """The summarizer's formatted prompt for each history (its most recent records), uncached."""
        return [self.summarizer.format_prompt(self._summary_input(h)) for h in histories]

    def write_summaries(self, prompts: list[str]) -> list[str]:
        """The summarizer's text for each prompt, whole (to EOS or summary_tokens) and on one line, in batches."""
        cfg, texts = self.config, []
        for start in range(0, len(prompts), cfg.summary_batch_size):
            texts += generate_batch(self.summarizer.model, self.summarizer.tokenizer,
                                    prompts[start:start + cfg.summary_batch_size], None, cfg.summary_tokens,
                                    stop_at_newline=False)
        return [one_line(t) for t in texts]

    def _summary_input(self, history: list[ProfileItem]) -> str:
        tok = self.summarizer.tokenizer
        recent = history[-self.config.summary_records:]
        return summary_prompt([self.task.record_prompt(truncate_record(r, tok, self.config.summary_record_tokens))
                               for r in recent])

    def _read_cache(self) -> None:
        if self.cache_path is not None and self.cache_path.exists():
            self.cache.update(json.loads(self.cache_path.read_text(encoding="utf-8")))

    def _write_cache(self) -> None:
        if self.cache_path is not None:
            atomic_write_text(self.cache_path, json.dumps(self.cache, ensure_ascii=False, indent=1) + "\n")

    def fine_tune(self, stage1_split: LampSplit, run_dir: str | Path, tcfg=None, cfg=None,
                  target: LampSplit | None = None) -> Backbone:
        """As RAG's; a summarizer that is the backbone itself is copied first, so that the summaries go on
        being written by the untuned model after the backbone is tuned in place."""
        if self.summarizer is self.backbone:
            from tapper.experiment import copy_backbone

            self.summarizer = copy_backbone(self.backbone)
        return super().fine_tune(stage1_split, run_dir, tcfg, cfg, target)

    @staticmethod
    def profile_line(summary: str) -> str:
        return f"User profile: {summary}\n" if summary else ""

    def profile_text(self, example: Example) -> str:
        return self.profile_line(self.by_user.get(example.user_id, ""))

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
