"""Task registry: every LaMP task's prompt templates, profile fields, label set and metric.

The input strings of the official LaMP files already carry the instruction, so a task's job here is
(1) to turn a *history record* into an (input, output) pair with the same instruction (TAP-PER stage 2,
OPPU), (2) to render records for retrieval-augmented prompts (RAG, PAG), and (3) to map raw model text
onto a valid answer before scoring.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tapper.data.records import ProfileItem

MetricKind = Literal["classification", "regression", "generation"]

MOVIE_TAGS = (
    "sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy", "classic",
    "psychology", "fantasy", "romance", "thought-provoking", "social commentary", "violence", "true story",
)
NEWS_CATEGORIES = (
    "travel", "education", "parents", "style & beauty", "entertainment", "food & drink",
    "science & technology", "business", "sports", "healthy living", "women", "politics", "crime",
    "culture & arts", "religion",
)
RATINGS = ("1", "2", "3", "4", "5")


def _quote(s: object) -> str:
    return f'"{s}"'


@dataclass(frozen=True)
class Task:
    name: str  # "LaMP_7" etc., as in the outputs file's "task" field
    description: str
    profile_fields: tuple[str, ...]  # fields every profile item must carry (besides id)
    metric: MetricKind
    labels: tuple[str, ...] | None
    # history record -> the (input, output) pair it would have been as a query; None if impossible
    history_input: Callable[[ProfileItem], str] | None
    history_output_field: str | None
    # history record -> one line for retrieval-augmented prompts (LaMP's per-task record templates)
    record_prompt: Callable[[ProfileItem], str]
    # the text that BM25 and the embedding means see for a record
    record_key: Callable[[ProfileItem], str]
    max_new_tokens: int
    # Where the instruction ends and the content (review, article, tweet...) begins in a query input:
    # prompts are cut in the content only, and retrieval and z_q read the content alone. None: no marker
    # (the whole input is content).
    content_marker: str | None = None
    # The record field that is cut when a rendered record is over its budget (the label is never cut).
    record_content_field: str | None = None

    def split_input(self, text: str) -> tuple[str, str] | None:
        """(instruction, content) of a query input, split after the first content marker; None when the
        input does not carry the marker (a user's own template)."""
        if self.content_marker is None:
            return "", text
        at = text.find(self.content_marker)
        if at < 0:
            return None
        cut = at + len(self.content_marker)
        return text[:cut], text[cut:]

    def history_pair(self, item: ProfileItem) -> tuple[str, str] | None:
        if self.history_input is None or self.history_output_field is None:
            return None
        out = item.get(self.history_output_field)
        if out is None or str(out).strip() == "":
            return None
        return self.history_input(item), str(out)

    def rag_prompt(self, query_input: str, records: list[ProfileItem]) -> str:
        """LaMP's retrieval-augmented prompt: the selected records, then the original query."""
        if not records:
            return query_input
        joined = ", and ".join(self.record_prompt(r) for r in records)
        return f"{joined}. Following the given patterns, {query_input}"

    def clean_output(self, text: str) -> str:
        """Map raw generated text to the answer that is scored (first line; nearest label if labelled)."""
        line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
        if self.metric == "regression":
            m = re.search(r"-?\d+(?:\.\d+)?", line)
            return m.group(0) if m else line
        if self.labels is not None:
            low = line.lower().strip(" .\"'[]")
            for label in sorted(self.labels, key=len, reverse=True):
                if low == label.lower().strip("[]") or low.startswith(label.lower().strip("[]")):
                    return label
            return line
        return line


def _text(item: ProfileItem) -> str:
    return str(item.get("text", ""))


def _tags_prompt(labels: tuple[str, ...]) -> str:
    return "[" + ", ".join(labels) + "]"


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


register(Task(
    name="LaMP_1", description="personalized citation identification",
    profile_fields=("title",), metric="classification", labels=("[1]", "[2]"),
    history_input=None, history_output_field=None,
    record_prompt=lambda r: _quote(r.get("title", "")),
    record_key=lambda r: f"{r.get('title', '')} {r.get('abstract', '')}".strip(),
    max_new_tokens=4,
))
register(Task(
    name="LaMP_2", description="personalized movie tagging",
    profile_fields=("description", "tag"), metric="classification", labels=MOVIE_TAGS,
    history_input=lambda r: (
        "Which tag does this movie relate to among the following tags? Just answer with the tag name "
        f"without further explanation. tags: {_tags_prompt(MOVIE_TAGS)} description: {r.get('description', '')}"
    ),
    history_output_field="tag",
    record_prompt=lambda r: f"the tag for the movie: {_quote(r.get('description', ''))} is {_quote(r.get('tag', ''))}",
    record_key=lambda r: str(r.get("description", "")),
    max_new_tokens=6,
    content_marker="description: ", record_content_field="description",
))
register(Task(
    name="LaMP_2N", description="personalized news categorization",
    profile_fields=("text", "category"), metric="classification", labels=NEWS_CATEGORIES,
    history_input=lambda r: (
        "Which category does this article relate to among the following categories? Just answer with the "
        f"category name without further explanation. categories: {_tags_prompt(NEWS_CATEGORIES)} "
        f"article: {_text(r)}"
    ),
    history_output_field="category",
    record_prompt=lambda r: f"the category for the article: {_quote(_text(r))} is {_quote(r.get('category', ''))}",
    record_key=lambda r: f"{r.get('title', '')} {_text(r)}".strip(),
    max_new_tokens=6,
    content_marker="article: ", record_content_field="text",
))
register(Task(
    name="LaMP_3", description="personalized product rating",
    profile_fields=("text", "score"), metric="regression", labels=RATINGS,
    history_input=lambda r: (
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 "
        f"without further explanation. review: {_text(r)}"
    ),
    history_output_field="score",
    record_prompt=lambda r: f"{r.get('score', '')} is the score for {_quote(_text(r))}",
    record_key=_text,
    max_new_tokens=2,
    content_marker="review: ", record_content_field="text",
))
register(Task(
    name="LaMP_4", description="personalized news headline generation",
    profile_fields=("text", "title"), metric="generation", labels=None,
    history_input=lambda r: f"Generate a headline for the following article: {_text(r)}",
    history_output_field="title",
    record_prompt=lambda r: f"{_quote(r.get('title', ''))} is the title for {_quote(_text(r))}",
    record_key=lambda r: f"{r.get('title', '')} {_text(r)}".strip(),
    max_new_tokens=24,
    content_marker="article: ", record_content_field="text",
))
register(Task(
    name="LaMP_5", description="personalized scholarly title generation",
    profile_fields=("title", "abstract"), metric="generation", labels=None,
    history_input=lambda r: f"Generate a title for the following abstract of a paper: {r.get('abstract', '')}",
    history_output_field="title",
    record_prompt=lambda r: f"{_quote(r.get('title', ''))} is the title for {_quote(r.get('abstract', ''))}",
    record_key=lambda r: f"{r.get('title', '')} {r.get('abstract', '')}".strip(),
    max_new_tokens=24,
    content_marker="paper: ", record_content_field="abstract",
))
register(Task(
    name="LaMP_6", description="personalized email subject generation",
    profile_fields=("text", "title"), metric="generation", labels=None,
    history_input=lambda r: f"Generate a subject for the following email: {_text(r)}",
    history_output_field="title",
    record_prompt=lambda r: f"{_quote(r.get('title', ''))} is the title for {_quote(_text(r))}",
    record_key=lambda r: f"{r.get('title', '')} {_text(r)}".strip(),
    max_new_tokens=16,
    content_marker="email: ", record_content_field="text",
))
register(Task(
    name="LaMP_7", description="personalized tweet paraphrasing",
    profile_fields=("text",), metric="generation", labels=None,
    # A history tweet has no source to paraphrase, so its pair asks the model to restate the user's own
    # tweet: what is learned is the user's wording, which is exactly what LaMP-7 scores.
    history_input=lambda r: (
        f"Paraphrase the following tweet without any explanation before or after it: {_text(r)}"
    ),
    history_output_field="text",
    record_prompt=lambda r: _quote(_text(r)),
    record_key=_text,
    max_new_tokens=40,
    content_marker="before or after it: ", record_content_field="text",
))


def get_task(name: str) -> Task:
    """Look a task up by its LaMP name; accepts "LaMP_7", "lamp7", "LaMP-7", "7", "2N"."""
    key = name.strip()
    if key in TASKS:
        return TASKS[key]
    norm = re.sub(r"[^0-9a-z]", "", key.lower()).removeprefix("lamp")
    for task in TASKS.values():
        if task.name.lower().removeprefix("lamp_") == norm:
            return task
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")


# LaMP-5's shape on Reddit posts (tapper.data.builders.build_lamp5r_from_reddit): a post body in place of a
# paper abstract, the author's own title as the answer. Not LaMP-5 (scholarly abstracts), hence its own name.
register(Task(
    name="LaMP_5R", description="personalized Reddit post title generation (LaMP-5 shape)",
    profile_fields=("title", "text"), metric="generation", labels=None,
    history_input=lambda r: f"Generate a title for the following Reddit post: {_text(r)}",
    history_output_field="title",
    record_prompt=lambda r: f"{_quote(r.get('title', ''))} is the title for {_quote(_text(r))}",
    record_key=lambda r: f"{r.get('title', '')} {_text(r)}".strip(),
    max_new_tokens=32,  # titles: 9 tokens median, 25 at the 95th percentile (SmolLM2's tokenizer)
    content_marker="Reddit post: ", record_content_field="text",
))
