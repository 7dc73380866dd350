"""The in-memory shape of LaMP data: questions, their users' profiles, and gold outputs.

Everything downstream (retrieval, prefixes, baselines, metrics) reads these types, never raw JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProfileItem:
    """One past record of a user, with all of its LaMP fields kept verbatim in `fields`."""

    id: str
    fields: dict[str, Any]
    # Days since 1970-01-01 (timezone-naive, fractional allowed); None when the record has no date.
    day: float | None
    # Position in the file's profile list; breaks ties between records with the same day.
    position: int

    @property
    def text(self) -> str:
        return str(self.fields.get("text") or self.fields.get("abstract") or self.fields.get("description") or "")

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


@dataclass
class Question:
    """One LaMP request: a user, a query input, and the user's history ordered by (day, position)."""

    id: str
    input: str
    profile: list[ProfileItem]
    # LaMP has one question per user, so the user id defaults to the question id; builders that know
    # the real user (e.g. an Amazon reviewerID) store it in the question's "user_id" field.
    user_id: str
    # Day of the query itself when known (time-based builders); None for the official LaMP files.
    day: float | None = None
    # Any other top-level fields of the record, kept so that a read -> write round trip is lossless.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LampSplit:
    """A questions file plus (optionally) its golds, for one task."""

    task: str
    questions: list[Question]
    golds: dict[str, str] | None = None

    def gold(self, question_id: str) -> str:
        if self.golds is None or question_id not in self.golds:
            raise KeyError(f"no gold output for question id {question_id!r} in task {self.task}")
        return self.golds[question_id]
