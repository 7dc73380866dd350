"""Numbers that tell whether a LaMP split is usable: users, profile sizes, dates, labels, duplicates."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from tapper.data.dates import RANGE_TEXT, DateError, format_day
from tapper.data.records import LampSplit, Question
from tapper.data.tasks import get_task

# Profile fields whose values are labels (distribution worth showing) rather than free text.
LABEL_FIELDS = ("score", "category", "tag")
# Outputs with at most this many distinct values are shown as a distribution even without a label set.
_MAX_DISTINCT_FOR_DISTRIBUTION = 20


def split_stats(data: LampSplit | list[Question], task: str | None = None) -> dict[str, Any]:
    """Stats of a split (or a bare list of questions) as a JSON-ready dict."""
    questions = data.questions if isinstance(data, LampSplit) else data
    golds = data.golds if isinstance(data, LampSplit) else None
    task_name = task or (data.task if isinstance(data, LampSplit) else None)
    lengths = [len(q.profile) for q in questions]
    items = [item for q in questions for item in q.profile]
    days = [item.day for item in items if item.day is not None]
    stats: dict[str, Any] = {
        "task": task_name,
        "questions": len(questions),
        "users": len({q.user_id for q in questions}),
        "profile_items": len(items),
        "profile_length": _summary_numbers(lengths),
        "dates": {
            "profile_items_dated": _fraction(len(days), len(items)),
            "questions_dated": _fraction(sum(q.day is not None for q in questions), len(questions)),
            "first": _day_text(min(days)) if days else None,
            "last": _day_text(max(days)) if days else None,
        },
        "duplicate_ids": {
            "questions": len(questions) - len({q.id for q in questions}),
            "profile_items": sum(len(q.profile) - len({item.id for item in q.profile}) for q in questions),
        },
        "profile_labels": {
            name: _sorted_counts(Counter(str(item.get(name)) for item in items if item.get(name) is not None))
            for name in LABEL_FIELDS if any(item.get(name) is not None for item in items)
        },
    }
    if golds is not None:
        stats["golds"] = _gold_stats(list(golds.values()), task_name)
    return stats


def _day_text(day: float) -> str:
    """The ISO date of a day number; a day outside the parser's range (only code, never a reader, can make
    one) is shown as the number itself instead of crashing the whole report."""
    try:
        return format_day(day)
    except DateError:
        return f"day {day!r} (outside {RANGE_TEXT})"


def _gold_stats(outputs: list[str], task_name: str | None) -> dict[str, Any]:
    labelled = task_name is not None and _task_labels(task_name) is not None
    counts = Counter(outputs)
    result: dict[str, Any] = {"count": len(outputs), "distinct": len(counts)}
    if labelled or len(counts) <= _MAX_DISTINCT_FOR_DISTRIBUTION:
        result["labels"] = _sorted_counts(counts)
    else:
        result["words"] = _summary_numbers([len(output.split()) for output in outputs])
    return result


def _task_labels(name: str) -> tuple[str, ...] | None:
    return get_task(name).labels if _known(name) else None


def _known(name: str) -> bool:
    try:
        get_task(name)
    except KeyError:
        return False
    return True


def _summary_numbers(values: list[int]) -> dict[str, float | int | None]:
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {"min": min(values), "median": statistics.median(values),
            "mean": round(statistics.fmean(values), 2), "max": max(values)}


def _fraction(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _sorted_counts(counts: Counter[str]) -> dict[str, int]:
    """Numeric labels in numeric order, others by frequency (so "1".."5" read as a scale)."""
    if all(_is_number(label) for label in counts):
        return {label: counts[label] for label in sorted(counts, key=float)}
    return dict(counts.most_common())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def stats_rows(stats: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(name, value) rows of a stats dict, nested keys joined with dots, for a two-column table."""
    rows: list[tuple[str, str]] = []
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key in ("labels", *LABEL_FIELDS):
            shown = ", ".join(f"{label}: {count}" for label, count in value.items())
            rows.append((name, shown or "-"))
        elif isinstance(value, dict):
            rows += stats_rows(value, prefix=f"{name}.")
        else:
            rows.append((name, "-" if value is None else str(value)))
    return rows
