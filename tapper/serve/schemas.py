"""Request and response bodies of the HTTP API, with every input limit in one place.

Models are strict (a number where text is expected is an error, not silently converted) and reject
unknown fields, so a typo in a field name is reported instead of ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from tapper.data.lamp_io import parse_date
from tapper.data.tasks import get_task

MAX_TEXT_CHARS = 20_000  # per text field of a record and per generate input
MAX_LABEL_CHARS = 200
MAX_RECORDS_PER_REQUEST = 1000
MAX_GENERATE_ITEMS = 64  # entries in one list-form /v1/generate request
ID_PATTERN = r"^[A-Za-z0-9._:@\-]+$"

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
RecordId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
ShortText = Annotated[str, StringConstraints(max_length=MAX_LABEL_CHARS)]
DateValue = Annotated[str, StringConstraints(max_length=64)] | int | float

TEXT_FIELDS = ("text", "title", "abstract", "description")


class _Strict(BaseModel):
    # allow_inf_nan: the body parser already refuses NaN and Infinity; this keeps models built in code honest
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _check_date(value: Any) -> Any:
    try:
        parse_date(value)
    except ValueError as e:  # DateError: out of range, unrecognized, not finite...
        raise ValueError(f"malformed date: {e}") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must hold at least one non-space character")
    return value


class RecordIn(_Strict):
    """One history record; at least one of text/title/abstract/description must be non-empty."""

    id: RecordId
    text: LongText | None = None
    title: LongText | None = None
    abstract: LongText | None = None
    description: LongText | None = None
    label: ShortText | None = None
    tag: ShortText | None = None
    category: ShortText | None = None
    score: float | ShortText | None = None
    date: DateValue | None = Field(default=None, description="ISO date/datetime, unix seconds, or a year")

    _date = field_validator("date")(classmethod(lambda cls, v: _check_date(v)))
    _id = field_validator("id")(classmethod(lambda cls, v: _not_blank(v)))

    @model_validator(mode="after")
    def _has_text(self) -> RecordIn:
        if not any((getattr(self, name) or "").strip() for name in TEXT_FIELDS):
            raise ValueError(f"record {self.id!r} has no text: give one of {', '.join(TEXT_FIELDS)}")
        return self


class AppendIn(_Strict):
    records: list[RecordIn] = Field(min_length=1, max_length=MAX_RECORDS_PER_REQUEST)


# Request examples shown (and sendable with "Try it out") in /docs; tests send each one to the server.
RECORDS_EXAMPLES = {
    "reviews": {
        "summary": "Two dated reviews (LaMP-3)",
        "value": {"records": [
            {"id": "r1", "text": "Loved it, my skin feels soft", "score": 5, "date": "2024-03-01"},
            {"id": "r2", "text": "Leaked in the bag, would not buy again", "score": 2, "date": "2024-04-12"},
        ]},
    },
    "news": {
        "summary": "An article with its title (LaMP-4 / LaMP-2N)",
        "value": {"records": [{"id": "a1", "text": "The city council voted on Tuesday to ...",
                               "title": "Council approves new bike lanes", "category": "POLITICS",
                               "date": 1704067200}]},
    },
}
GENERATE_EXAMPLES = {
    "one": {
        "summary": "One request",
        "value": {"user_id": "ann", "task": "LaMP_3",
                  "input": "What is the score of the following review on a scale of 1 to 5? review: great value"},
    },
    "several": {
        "summary": "Several requests in one call (answered in order)",
        "value": [
            {"user_id": "ann", "task": "LaMP_3", "input": "What is the score of the following review on a scale "
                                                        "of 1 to 5? review: broke after a week"},
            {"user_id": "bob", "task": "LaMP_3", "input": "What is the score of the following review on a scale "
                                                        "of 1 to 5? review: smells lovely", "date": "2024-05-01"},
        ],
    },
}


class AppendOut(BaseModel):
    user_id: str
    added: int
    duplicates: int = Field(description="ids already stored with the same content (a retried request)")
    total: int


class GenerateIn(_Strict):
    user_id: Identifier
    task: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    input: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
    date: DateValue | None = Field(default=None, description="when the query happens; default: after all records")

    _date = field_validator("date")(classmethod(lambda cls, v: _check_date(v)))
    _input = field_validator("input")(classmethod(lambda cls, v: _not_blank(v)))

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        try:
            return get_task(value).name
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None


class GenerateOut(BaseModel):
    user_id: str
    task: str
    output: str = Field(description="the task-cleaned answer")
    raw: str = Field(description="the generated text before cleaning")
    record_ids: list[str] = Field(description="ids of the history records that fed P_q, best first")
    path: Literal["personalized", "cold_start", "non_personalized"]


class UserOut(BaseModel):
    user_id: str
    records: int
    history_version: int
    row_version: int = Field(description="0 until the first refresh")
    row_fitted_on_history_version: int | None


class JobOut(BaseModel):
    id: str
    user_id: str
    status: Literal["queued", "running", "done", "failed"]
    step: int
    total: int
    loss: float | None
    error: str | None
    created: float
    updated: float


class HealthOut(BaseModel):
    status: Literal["ok"]
    task: str
    row_size: int
    store: str
    queue: int
