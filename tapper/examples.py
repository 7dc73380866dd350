"""Turning LaMP questions and history records into model-ready examples, one rule for every method.

A query (a LaMP question, or history record i replayed as a question) becomes: the formatted prompt,
its raw text (what BM25 and z_q read), and the records selected for it from strictly earlier history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tapper.backbone import Backbone
from tapper.batching import truncate_text
from tapper.data.records import ProfileItem, Question
from tapper.data.tasks import Task
from tapper.retrieval import Retriever, get_retriever
from tapper.retrieval.context import RecordContext, UndatedCounter, build_context


@dataclass
class Example:
    user_id: str
    query: str  # the raw task input (truncated)
    prompt: str  # the backbone-formatted prompt
    context: RecordContext = field(default_factory=RecordContext)
    answer: str | None = None
    example_id: str = ""
    records: list[ProfileItem] = field(default_factory=list)  # the selected records themselves, best first


class ExampleBuilder:
    def __init__(
        self,
        task: Task,
        backbone: Backbone,
        top_k: int = 10,
        retriever: Retriever | str = "bm25",
        max_input_tokens: int = 192,
        history_inputs: Mapping[str, str] | None = None,
    ):
        """history_inputs maps a history record's id to the input its replayed query should show instead of
        the task template (see tapper.history_inputs: for LaMP-7 the template would contain the answer).
        When given, only the records it names are replayed."""
        self.task = task
        self.backbone = backbone
        self.top_k = top_k
        self.retriever = get_retriever(retriever) if isinstance(retriever, str) else retriever
        self.max_input_tokens = max_input_tokens
        self.undated = UndatedCounter()
        self.history_inputs = None if history_inputs is None else dict(history_inputs)
        self.skipped_history = 0  # records with nothing to learn from (e.g. an empty answer field)

    def for_query(
        self,
        user_id: str,
        query: str,
        history: list[ProfileItem],
        end: int | None = None,
        query_day: float | None = None,
        answer: str | None = None,
        example_id: str = "",
        prompt_text: str | None = None,
    ) -> Example:
        """`prompt_text` replaces the query in the prompt (RAG writes records into it); z_q still reads the query."""
        end = len(history) if end is None else end
        query = truncate_text(self.backbone.tokenizer, query, self.max_input_tokens)
        ctx = build_context(self.task, query, history, end, self.top_k, self.retriever, query_day)
        self.undated.add(ctx)
        by_id = {item.id: item for item in history[:end]}
        return Example(
            user_id=user_id,
            query=query,
            prompt=self.backbone.format_prompt(query if prompt_text is None else prompt_text),
            context=ctx,
            answer=answer,
            example_id=example_id,
            records=[by_id[r] for r in ctx.record_ids],
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
