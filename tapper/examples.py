"""Turning LaMP questions and history records into model-ready examples, one rule for every method.

A query (a LaMP question, or history record i replayed as a question) becomes: the formatted prompt,
its raw content (what BM25 and z_q read), and the records selected for it from strictly earlier history.

Three budgets, each cut where it loses least:
- the prompt input (`max_input_tokens`, instruction + content): the instruction and label list are kept
  whole and only the content (review, article, tweet) is cut; a budget the instruction alone fills is
  an error, never a prompt without content;
- the retrieval query (`max_query_tokens`): the content alone, without the instruction, which is the
  same for every query and would make z_q and BM25 blind to what is asked;
- each record as P_q embeds it (`max_record_tokens`): the task's record template, its content field cut
  so that the record's answer (score, label, title) always survives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from tapper.backbone import Backbone
from tapper.batching import truncate_text
from tapper.data.records import ProfileItem, Question
from tapper.data.tasks import Task
from tapper.retrieval import Retriever, get_retriever
from tapper.retrieval.context import RecordContext, UndatedCounter, build_context

log = logging.getLogger(__name__)
MIN_CONTENT_TOKENS = 16  # a prompt budget that leaves less than this for the content is a configuration error


class PromptBudgetError(ValueError):
    """The task's instruction alone does not fit the prompt budget."""


def fit_input(task: Task, tokenizer, text: str, max_tokens: int) -> str:
    """The query input within max_tokens: the instruction whole, the content cut from its end."""
    parts = task.split_input(text)
    if parts is None:  # no marker: nothing is known to be instruction, so the whole input is content
        return truncate_text(tokenizer, text, max_tokens)
    instruction, content = parts
    used = len(tokenizer(instruction, add_special_tokens=False)["input_ids"]) if instruction else 0
    room = max_tokens - used
    if room < MIN_CONTENT_TOKENS:
        raise PromptBudgetError(
            f"{task.name}: the instruction takes {used} tokens of max_input_tokens={max_tokens}, leaving "
            f"{max(room, 0)} for the content (at least {MIN_CONTENT_TOKENS} needed); "
            f"set max_input_tokens to {used + MIN_CONTENT_TOKENS} or more"
        )
    return instruction + truncate_text(tokenizer, content, room)


def retrieval_query(task: Task, tokenizer, text: str, max_tokens: int) -> str:
    """What BM25 and z_q read: the input's content without the instruction, cut to max_tokens."""
    parts = task.split_input(text)
    content = text if parts is None else parts[1]
    return truncate_text(tokenizer, content, max_tokens)


def fit_record(task: Task, tokenizer, item: ProfileItem, max_tokens: int) -> str:
    """The record through the task's record template within max_tokens, cutting its content field only, so
    that the record's answer is never what is lost."""
    text = task.record_prompt(item)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    name = task.record_content_field
    if n <= max_tokens:
        return text
    if name is None or not isinstance(item.get(name), str):
        return truncate_text(tokenizer, text, max_tokens)
    frame = task.record_prompt(replace(item, fields={**item.fields, name: ""}))
    room = max_tokens - len(tokenizer(frame, add_special_tokens=False)["input_ids"])
    if room <= 0:  # template and answer alone are over budget: keep the answer's end of the record
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[-max_tokens:])
    cut = truncate_text(tokenizer, item.get(name), room)
    return task.record_prompt(replace(item, fields={**item.fields, name: cut}))


@dataclass
class Example:
    user_id: str
    query: str  # what retrieval and z_q read: the input's content, without the instruction
    prompt: str  # the backbone-formatted prompt
    context: RecordContext = field(default_factory=RecordContext)
    answer: str | None = None
    example_id: str = ""
    records: list[ProfileItem] = field(default_factory=list)  # the selected records themselves, best first
    input: str = ""  # the task input as the prompt shows it (instruction whole, content cut to the budget)


class ExampleBuilder:
    def __init__(
        self,
        task: Task,
        backbone: Backbone,
        top_k: int = 10,
        retriever: Retriever | str = "bm25",
        max_input_tokens: int = 192,
        history_inputs: Mapping[str, str] | None = None,
        max_query_tokens: int = 128,
        max_record_tokens: int = 128,
    ):
        """history_inputs maps a history record's id to the input its replayed query should show instead of
        the task template (see tapper.history_inputs: for LaMP-7 the template would contain the answer).
        When given, only the records it names are replayed."""
        self.task = task
        self.backbone = backbone
        self.top_k = top_k
        self.retriever = get_retriever(retriever) if isinstance(retriever, str) else retriever
        self.max_input_tokens = max_input_tokens
        self.max_query_tokens = max_query_tokens
        self.max_record_tokens = max_record_tokens
        self.undated = UndatedCounter()
        self.history_inputs = None if history_inputs is None else dict(history_inputs)
        self.skipped_history = 0  # records with nothing to learn from (e.g. an empty answer field)
        self.unmarked_inputs = 0  # inputs without the task's content marker (cut as plain text)

    def for_query(
        self,
        user_id: str,
        query: str,
        history: list[ProfileItem],
        end: int | None = None,
        query_day: float | None = None,
        answer: str | None = None,
        example_id: str = "",
    ) -> Example:
        """`query` is the task input (instruction + content) as a LaMP file carries it."""
        end = len(history) if end is None else end
        tok = self.backbone.tokenizer
        if self.task.split_input(query) is None:
            self.unmarked_inputs += 1
            if self.unmarked_inputs == 1:
                log.warning("%s: an input lacks the content marker %r; it is cut as plain text and retrieval "
                            "reads all of it: %.80r", self.task.name, self.task.content_marker, query)
        shown = fit_input(self.task, tok, query, self.max_input_tokens)
        content = retrieval_query(self.task, tok, query, self.max_query_tokens)
        ctx = build_context(self.task, content, history, end, self.top_k, self.retriever, query_day,
                            render=lambda item: fit_record(self.task, tok, item, self.max_record_tokens))
        self.undated.add(ctx)
        by_id = {item.id: item for item in history[:end]}
        return Example(
            user_id=user_id,
            query=content,
            prompt=self.backbone.format_prompt(shown),
            context=ctx,
            answer=answer,
            example_id=example_id,
            records=[by_id[r] for r in ctx.record_ids],
            input=shown,
        )

    def for_question(self, question: Question, answer: str | None = None) -> Example:
        return self.for_query(
            question.user_id, question.input, question.profile, query_day=question.day,
            answer=answer, example_id=question.id,
        )

    def from_history(self, user_id: str, history: list[ProfileItem], max_pairs: int | None = None) -> list[Example]:
        """Each history record replayed as a query over the records before it (its own answer is the target).
        With max_pairs, the most recent records are kept: they have the most history behind them."""
        if self.task.history_input is None:
            raise ValueError(f"{self.task.name}: history records cannot be turned into (input, output) pairs")
        positions = range(len(history))
        if self.history_inputs is not None:
            positions = [i for i in positions if history[i].id in self.history_inputs]
        if max_pairs is not None:
            positions = positions[-max_pairs:]
        out = []
        for i in positions:
            pair = self.task.history_pair(history[i])
            if pair is None:
                self.skipped_history += 1
                continue
            query = pair[0] if self.history_inputs is None else self.history_inputs[history[i].id]
            out.append(self.for_query(
                user_id, query, history, end=i, query_day=history[i].day, answer=pair[1],
                example_id=f"{user_id}/{history[i].id}",
            ))
        return out
