"""What P_q sees for one request: the selected records, with their time and order distances."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from tapper.data.records import ProfileItem
from tapper.data.tasks import Task
from tapper.retrieval.base import Retriever, select_before

log = logging.getLogger(__name__)


@dataclass
class RecordContext:
    record_ids: list[str] = field(default_factory=list)  # best first
    record_texts: list[str] = field(default_factory=list)  # what each record's embedding mean reads
    days_back: list[float] = field(default_factory=list)  # NaN where a date is missing
    steps_back: list[float] = field(default_factory=list)  # 1 = the record right before the target
    undated: int = 0  # how many selected records had no usable time distance


def reference_day(history: list[ProfileItem], end: int, query_day: float | None) -> float | None:
    """The query's own day when known; else the latest dated record before it (the official LaMP files
    carry no query dates, and the query follows every profile record)."""
    if query_day is not None:
        return query_day
    days = [item.day for item in history[:end] if item.day is not None]
    return max(days) if days else None


def build_context(
    task: Task,
    query: str,
    history: list[ProfileItem],
    end: int,
    k: int,
    retriever: Retriever,
    query_day: float | None = None,
    render: Callable[[ProfileItem], str] | None = None,
) -> RecordContext:
    """The one selection rule, for training and inference: top-k of history[:end] against `query`.
    `render` turns a selected record into the text P_q embeds (default: the task's record template)."""
    picked = select_before(query, history, end, k, task.record_key, retriever)
    ref = reference_day(history, end, query_day)
    ctx = RecordContext()
    for i in picked:
        item = history[i]
        ctx.record_ids.append(item.id)
        # The record's answer (score, title, label) is part of what is embedded: P_q must be able to see
        # how this user answered before, not only what the records were about.
        ctx.record_texts.append((render or task.record_prompt)(item))
        days = ref - item.day if (ref is not None and item.day is not None) else math.nan
        ctx.undated += math.isnan(days)
        ctx.days_back.append(days)
        ctx.steps_back.append(float(end - i))
    return ctx


class UndatedCounter:
    """Counts records whose time decay was switched off for lack of a date, and says so once."""

    def __init__(self) -> None:
        self.records = 0
        self.undated = 0

    def add(self, ctx: RecordContext) -> None:
        self.records += len(ctx.record_ids)
        self.undated += ctx.undated

    def report(self, what: str) -> None:
        if self.undated:
            log.warning(
                "%s: %d of %d selected records have no usable date; time decay is off for them "
                "(order decay still applies)", what, self.undated, self.records,
            )
