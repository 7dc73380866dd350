"""Naive predictions that need no model: the floors every method has to clear."""

from __future__ import annotations

import statistics
from collections import Counter

from tapper.data.records import LampSplit, Question

LAMP7_INSTRUCTION = "Paraphrase the following tweet without any explanation before or after it: "
LAMP4_INSTRUCTION = "Generate a headline for the following article: "
LEAD_WORDS = 12  # about a HuffPost headline's length


def lead_words(text: str, n: int = LEAD_WORDS) -> str:
    """The summarisation "lead" floor: the article's first n words as its headline."""
    return " ".join(text.split()[:n])


def mean_past_rating(q: Question) -> str:
    scores = [float(p.get("score")) for p in q.profile if p.get("score") is not None]
    return f"{statistics.mean(scores):.3f}" if scores else "5"


def floors(task: str, target: LampSplit, others: LampSplit | None = None) -> dict[str, dict[str, str]]:
    """{floor name: {question id: prediction}} for the task (empty where LaMP has no standard floor)."""
    out: dict[str, dict[str, str]] = {}
    if task == "LaMP_7":
        out["copy the input (floor)"] = {q.id: q.input.removeprefix(LAMP7_INSTRUCTION) for q in target.questions}
    if task == "LaMP_4":
        out[f"first {LEAD_WORDS} words of the article (floor)"] = {
            q.id: lead_words(q.input.removeprefix(LAMP4_INSTRUCTION)) for q in target.questions}
    if task == "LaMP_3":
        out["user's mean past rating (floor)"] = {q.id: mean_past_rating(q) for q in target.questions}
        out["always 5 (floor)"] = {q.id: "5" for q in target.questions}
    if task == "LaMP_2N" and others is not None and others.golds:
        majority = Counter(others.golds.values()).most_common(1)[0][0]
        out[f"majority category, '{majority}' (floor)"] = {q.id: majority for q in target.questions}

        def user_majority(q: Question) -> str:
            seen = Counter(p.get("category") for p in q.profile if p.get("category"))
            return seen.most_common(1)[0][0] if seen else majority

        out["user's most frequent past category (floor)"] = {q.id: user_majority(q) for q in target.questions}
    return out
