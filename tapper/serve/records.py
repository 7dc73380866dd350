"""API records -> stored history records in the shape of a LaMP profile item of the run's task.

The API speaks generic names (text, label); a LaMP task may call them otherwise (LaMP-2's movie text is
`description` and its label `tag`, LaMP-5's text is `abstract`, LaMP-2N's label `category`). A generic field
fills the task's own field when the client did not send that one, so the task's templates find it.
"""

from __future__ import annotations

from typing import Any

from tapper.data.lamp_io import parse_date
from tapper.data.tasks import Task
from tapper.serve.schemas import RecordIn
from tapper.store import NewRecord

# task field -> the generic API field that can stand in for it
GENERIC_SOURCE = {"abstract": "text", "description": "text", "tag": "label", "category": "label"}


def _score_text(score: float | str) -> str:
    # LaMP files carry ratings as strings ("4"); keep that shape so prompts read the same
    if isinstance(score, float):
        return str(int(score)) if score.is_integer() else str(score)
    return score


def to_new_record(record: RecordIn, task: Task) -> NewRecord:
    fields: dict[str, Any] = {
        name: value for name, value in record.model_dump(exclude={"id"}).items() if value is not None
    }
    if "score" in fields:
        fields["score"] = _score_text(fields["score"])
    wanted = set(task.profile_fields)
    if task.history_output_field:
        wanted.add(task.history_output_field)
    for name in sorted(wanted):
        source = GENERIC_SOURCE.get(name)
        if name not in fields and source in fields:
            fields[name] = fields[source]
    return NewRecord(id=record.id, fields=fields, day=parse_date(record.date))
