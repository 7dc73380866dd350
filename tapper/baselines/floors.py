"""Naive predictions that need no model: the floors every method has to clear."""

from __future__ import annotations

import statistics
from collections import Counter

from tapper.data.records import LampSplit, Question
from tapper.data.tasks import get_task

LAMP7_INSTRUCTION = "Paraphrase the following tweet without any explanation before or after it: "
LAMP4_INSTRUCTION = "Generate a headline for the following article: "
LEAD_WORDS = 12  # about a HuffPost headline's length
REDDIT_LEAD_WORDS = 8  # the median Reddit title in words (reddit_college_posts, LaMP_5R)
# classification tasks whose profile items carry the label in this field
LABEL_FIELDS = {"LaMP_2N": "category", "LaMP_2": "tag"}


def lead_words(text: str, n: int = LEAD_WORDS) -> str:
    """The summarisation "lead" floor: the article's first n words as its headline."""
    return " ".join(text.split()[:n])


def mean_past_rating(q: Question) -> str:
    scores = [float(p.get("score")) for p in q.profile if p.get("score") is not None]
    return f"{statistics.mean(scores):.3f}" if scores else "5"


def last_output(q: Question, field: str, fallback: str) -> str:
    """The user's latest past output (profiles are ordered by (day, position): the last listed where undated);
    the fallback for a user without history."""
    return str(q.profile[-1].get(field, "")) if q.profile else fallback


def floors(task: str, target: LampSplit, others: LampSplit | None = None) -> dict[str, dict[str, str]]:
    """{floor name: {question id: prediction}} for the task (empty where LaMP has no standard floor). Each
    generation task has a user-blind floor from the input and a user lookup that reads only the history."""
    out: dict[str, dict[str, str]] = {}
    if task == "LaMP_7":
        copied = {q.id: q.input.removeprefix(LAMP7_INSTRUCTION) for q in target.questions}
        out["copy the input (floor)"] = copied
        out["user's last past tweet (floor)"] = {q.id: last_output(q, "text", copied[q.id]) for q in target.questions}
    if task == "LaMP_4":
        lead = {q.id: lead_words(q.input.removeprefix(LAMP4_INSTRUCTION)) for q in target.questions}
        out[f"first {LEAD_WORDS} words of the article (floor)"] = lead
        out["user's most recent past headline (floor)"] = {q.id: last_output(q, "title", lead[q.id])
                                                           for q in target.questions}
    if task == "LaMP_3":
        out["user's mean past rating (floor)"] = {q.id: mean_past_rating(q) for q in target.questions}
        out["always 5 (floor)"] = {q.id: "5" for q in target.questions}
    if task == "LaMP_5R":
        lead = {q.id: lead_words(content(task, q.input), REDDIT_LEAD_WORDS) for q in target.questions}
        out[f"first {REDDIT_LEAD_WORDS} words of the post (floor)"] = lead
        out["user's most recent past title (floor)"] = {q.id: last_output(q, "title", lead[q.id])
                                                        for q in target.questions}
    label = LABEL_FIELDS.get(task)
    if label is not None and others is not None and others.golds:
        majority = Counter(others.golds.values()).most_common(1)[0][0]
        out[f"majority {label}, '{majority}' (floor)"] = {q.id: majority for q in target.questions}

        def user_majority(q: Question) -> str:
            seen = Counter(p.get(label) for p in q.profile if p.get(label))
            return seen.most_common(1)[0][0] if seen else majority

        out[f"user's most frequent past {label} (floor)"] = {q.id: user_majority(q) for q in target.questions}
    return out


def content(task: str, text: str) -> str:
    """The content of a query input (the post, the article) without the task's instruction."""
    parts = get_task(task).split_input(text)
    return text if parts is None else parts[1]
