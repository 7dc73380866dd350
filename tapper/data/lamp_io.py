"""Read, validate and write the official LaMP JSON files.

Questions: ``[{"id", "input", "profile": [{"id", ...fields}], ...}]``.
Outputs (golds and predictions alike): ``{"task": "LaMP_k", "golds": [{"id", "output"}]}``.

Every problem is a `LampFormatError` naming the file, the record (index and id) and the field, so a
user can fix the file without a debugger. Writes are atomic: a half-written file never replaces a good one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import get_task
from tapper.io_utils import atomic_write_text

log = logging.getLogger(__name__)

UNKNOWN_TASK = "unknown"

_EPOCH = datetime(1970, 1, 1)
_SECONDS_PER_DAY = 86400.0
# Anything numeric beyond this many seconds (year ~5100) is almost surely a millisecond timestamp.
_MAX_UNIX_SECONDS = 1e11
_AMAZON_DATE = re.compile(r"^\d{1,2} \d{1,2}, \d{4}$")  # Amazon's reviewTime, e.g. "09 1, 2016"
_YEAR = re.compile(r"^\d{4}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

# Types allowed for the profile fields LaMP uses; any other field is kept verbatim whatever its type.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,), "title": (str,), "abstract": (str,), "description": (str,),
    "tag": (str,), "category": (str,), "score": (str, int, float), "date": (str, int, float),
}


class LampFormatError(ValueError):
    """A LaMP (or raw dump) file that cannot be used, with the place of the problem in the message."""

    def __init__(self, path: str | os.PathLike[str], where: str, field: str | None, problem: str):
        self.path = str(path)
        self.where = where
        self.field = field
        self.problem = problem
        place = f"{where}, field {field!r}" if field is not None else where
        super().__init__(f"{self.path}: {place}: {problem}")


# ---------------------------------------------------------------------------------------------- dates


def parse_date(value: Any) -> float | None:
    """Days since 1970-01-01 (naive UTC, fractional) of a date in any form LaMP-like data uses.

    Accepts ISO dates and datetimes (a zone is converted to UTC), unix seconds (number or numeric
    string), Amazon's "MM D, YYYY", and plain years ("2011", read as Jan 1st). None and "" mean no
    date and give None; anything else raises ValueError.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"a boolean is not a date: {value!r}")
    if isinstance(value, int | float):
        return _from_number(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} is not a date: {value!r}")
    text = value.strip()
    if not text:
        return None
    if _YEAR.match(text):
        return _days(datetime(int(text), 1, 1))
    if _NUMBER.match(text):
        return _from_number(float(text), value)
    if _AMAZON_DATE.match(text):
        return _days(datetime.strptime(text, "%m %d, %Y"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        expected = "ISO, unix seconds, 'MM D, YYYY' or a year"
        raise ValueError(f"unrecognized date {value!r} (expected {expected})") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return _days(parsed)


def _from_number(seconds: float, original: Any) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite timestamp: {original!r}")
    if seconds.is_integer() and 1000 <= seconds <= 9999:
        return _days(datetime(int(seconds), 1, 1))  # a bare year stored as a number
    if abs(seconds) > _MAX_UNIX_SECONDS:
        raise ValueError(f"timestamp {original!r} is too large for unix seconds (milliseconds?)")
    return seconds / _SECONDS_PER_DAY


def _days(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds() / _SECONDS_PER_DAY


def format_day(day: float) -> str:
    """The ISO form of a day count: "YYYY-MM-DD" for whole days, "YYYY-MM-DDTHH:MM:SS" otherwise."""
    moment = _EPOCH + timedelta(days=day)
    return moment.date().isoformat() if float(day).is_integer() else moment.isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- reading


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a UTF-8 JSON file; encoding and syntax errors become LampFormatErrors with a position."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        where = f"line {line} (byte {err.start})"
        raise LampFormatError(path, where, None, "file is not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise LampFormatError(path, where, None, f"invalid JSON: {err.msg}") from None


def read_questions(path: str | os.PathLike[str], task: str | None = None) -> list[Question]:
    """Read a LaMP questions file. With a task, also require that task's profile fields.

    Profile order: by (day, position) when every item has a date; when some lack one the file's order
    is kept (a warning counts them), since a guessed place for an undated record would be made up.
    """
    required = get_task(task).profile_fields if task is not None else ()
    data = load_json(path)
    if not isinstance(data, list):
        problem = f"expected a JSON list of questions, got {_kind(data)}"
        raise LampFormatError(path, "top level", None, problem)
    questions: list[Question] = []
    first_index: dict[str, int] = {}
    partly_dated = duplicate_item_ids = 0
    for index, record in enumerate(data):
        question, duplicates = _parse_question(path, index, record, required)
        if question.id in first_index:
            raise LampFormatError(path, f"record {index} (id {question.id!r})", "id",
                                  f"duplicate question id (first used by record {first_index[question.id]})")
        first_index[question.id] = index
        questions.append(question)
        partly_dated += 0 < sum(item.day is None for item in question.profile) < len(question.profile)
        duplicate_item_ids += duplicates
    if partly_dated:
        log.warning("%s: %d question(s) mix dated and undated profile items; their profiles keep file order",
                    path, partly_dated)
    if duplicate_item_ids:
        log.warning("%s: %d profile item id(s) repeat an earlier id in the same profile (kept)",
                    path, duplicate_item_ids)
    return questions


def _parse_question(
    path: str | os.PathLike[str], index: int, record: Any, required: tuple[str, ...]
) -> tuple[Question, int]:
    """One question, and how many of its profile item ids repeat an earlier one."""
    where = f"record {index}"
    if not isinstance(record, dict):
        raise LampFormatError(path, where, None, f"expected an object, got {_kind(record)}")
    qid = _required_str(path, where, record, "id")
    where = f"record {index} (id {qid!r})"
    text = _required_str(path, where, record, "input")
    profile = record.get("profile")
    if not isinstance(profile, list):
        problem = "missing" if "profile" not in record else f"expected a list, got {_kind(profile)}"
        raise LampFormatError(path, where, "profile", problem)
    user_id = _optional_id(path, where, record, "user_id") or qid
    day = _date_of(path, where, record)
    items = [_parse_item(path, where, position, raw, required) for position, raw in enumerate(profile)]
    if all(item.day is not None for item in items):
        items.sort(key=lambda item: (item.day, item.position))
    duplicates = len(items) - len({item.id for item in items})
    extra = {key: value for key, value in record.items() if key not in ("id", "input", "profile", "user_id")}
    question = Question(id=qid, input=text, profile=items, user_id=user_id, day=day, extra=extra)
    return question, duplicates


def _parse_item(
    path: str | os.PathLike[str], owner: str, position: int, raw: Any, required: tuple[str, ...]
) -> ProfileItem:
    where = f"{owner} profile item {position}"
    if not isinstance(raw, dict):
        raise LampFormatError(path, where, None, f"expected an object, got {_kind(raw)}")
    item_id = _optional_id(path, where, raw, "id")
    if item_id is None:
        raise LampFormatError(path, where, "id", "missing")
    where = f"{owner} profile item {position} (id {item_id!r})"
    for name in required:
        if name not in raw or raw[name] is None:
            raise LampFormatError(path, where, name, "missing (required by the task)")
    for name, allowed in _FIELD_TYPES.items():
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            names = " or ".join(t.__name__ for t in allowed)
            raise LampFormatError(path, where, name, f"expected {names}, got {_kind(value)}")
    fields = {key: value for key, value in raw.items() if key != "id"}
    return ProfileItem(id=item_id, fields=fields, day=_date_of(path, where, raw), position=position)


def read_golds(path: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """Read a LaMP outputs file (golds or predictions): the task name and {question id: output}."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise LampFormatError(path, "top level", None, f"expected an object, got {_kind(data)}")
    task = _required_str(path, "top level", data, "task")
    golds = data.get("golds")
    if not isinstance(golds, list):
        problem = "missing" if "golds" not in data else f"expected a list, got {_kind(golds)}"
        raise LampFormatError(path, "top level", "golds", problem)
    outputs: dict[str, str] = {}
    first_index: dict[str, int] = {}
    for index, record in enumerate(golds):
        where = f"gold {index}"
        if not isinstance(record, dict):
            raise LampFormatError(path, where, None, f"expected an object, got {_kind(record)}")
        gid = _required_str(path, where, record, "id")
        where = f"gold {index} (id {gid!r})"
        output = _required_str(path, where, record, "output")
        if gid in first_index:
            raise LampFormatError(path, where, "id", f"duplicate id (first used by gold {first_index[gid]})")
        first_index[gid] = index
        outputs[gid] = output
    return task, outputs


def read_split(
    questions_path: str | os.PathLike[str],
    outputs_path: str | os.PathLike[str] | None = None,
    task: str | None = None,
) -> LampSplit:
    """Questions plus (optionally) their golds; every question needs a gold and every gold a question.

    A task asked for by name must be registered (KeyError otherwise); an unregistered task named only
    by the outputs file is accepted with a warning, its profile fields unchecked.
    """
    if task is not None:
        task = get_task(task).name
    golds: dict[str, str] | None = None
    name = task
    if outputs_path is not None:
        gold_task, golds = read_golds(outputs_path)
        if task is not None and _canonical_task(task) != _canonical_task(gold_task):
            raise LampFormatError(outputs_path, "top level", "task",
                                  f"file is for {gold_task!r} but task {task!r} was asked for")
        name = task or gold_task
    known = name is not None and _is_known_task(name)
    if name is not None and not known:
        log.warning("%s: task %r is not registered; profile fields are not checked", questions_path, name)
    questions = read_questions(questions_path, task=name if known else None)
    if golds is not None:
        assert outputs_path is not None
        _check_golds_match(questions_path, outputs_path, questions, golds)
    return LampSplit(task=_canonical_task(name) if name else UNKNOWN_TASK, questions=questions, golds=golds)


def _check_golds_match(
    questions_path: str | os.PathLike[str], outputs_path: str | os.PathLike[str],
    questions: list[Question], golds: dict[str, str],
) -> None:
    question_ids = {q.id for q in questions}
    without_gold = [q.id for q in questions if q.id not in golds]
    if without_gold:
        raise LampFormatError(outputs_path, "golds", "id",
                              f"no gold for {_some(without_gold)} of {questions_path}")
    without_question = [gid for gid in golds if gid not in question_ids]
    if without_question:
        raise LampFormatError(outputs_path, "golds", "id",
                              f"gold for {_some(without_question)} has no question in {questions_path}")


def _some(ids: list[str], shown: int = 5) -> str:
    head = ", ".join(repr(i) for i in ids[:shown])
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)} question id(s) ({head}{more})"


def _is_known_task(name: str) -> bool:
    try:
        get_task(name)
    except KeyError:
        return False
    return True


def _canonical_task(name: str) -> str:
    return get_task(name).name if _is_known_task(name) else name


def _required_str(path: str | os.PathLike[str], where: str, record: dict[str, Any], name: str) -> str:
    if name not in record:
        raise LampFormatError(path, where, name, "missing")
    value = record[name]
    if not isinstance(value, str):
        raise LampFormatError(path, where, name, f"expected a string, got {_kind(value)}")
    return value


def _optional_id(path: str | os.PathLike[str], where: str, record: dict[str, Any], name: str) -> str | None:
    """An id that may be a string or an integer (some dumps use ints); returned as a string."""
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise LampFormatError(path, where, name, f"expected a string or an integer, got {_kind(value)}")


def _date_of(path: str | os.PathLike[str], where: str, record: dict[str, Any]) -> float | None:
    try:
        return parse_date(record.get("date"))
    except ValueError as err:
        raise LampFormatError(path, where, "date", str(err)) from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ---------------------------------------------------------------------------------------------- writing


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text via a temp file in the same directory and os.replace (never half-written)."""
    atomic_write_text(Path(path), text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def question_record(question: Question) -> dict[str, Any]:
    """The JSON object of a question; profile items go out in file position order so a re-read is exact."""
    record: dict[str, Any] = {"id": question.id, "input": question.input}
    if question.user_id != question.id:
        record["user_id"] = question.user_id
    extra = {k: v for k, v in question.extra.items() if k not in ("id", "input", "profile", "user_id")}
    if question.day is not None and "date" not in extra:
        extra["date"] = format_day(question.day)
    record.update(extra)
    record["profile"] = [_item_record(item) for item in sorted(question.profile, key=lambda i: i.position)]
    return record


def _item_record(item: ProfileItem) -> dict[str, Any]:
    record = {"id": item.id, **{k: v for k, v in item.fields.items() if k != "id"}}
    if item.day is not None and "date" not in record:
        record["date"] = format_day(item.day)
    return record


def write_questions(
    path: str | os.PathLike[str], questions: Iterable[Question], indent: int | None = None
) -> None:
    write_json_atomic(path, [question_record(q) for q in questions], indent=indent)


def write_outputs(
    path: str | os.PathLike[str], task: str, outputs: dict[str, str], indent: int | None = None
) -> None:
    """Write golds or predictions in LaMP's outputs format."""
    golds = [{"id": qid, "output": output} for qid, output in outputs.items()]
    write_json_atomic(path, {"task": task, "golds": golds}, indent=indent)


def write_split(
    directory: str | os.PathLike[str], name: str, split: LampSplit, indent: int | None = None
) -> list[Path]:
    """`{name}_questions.json` (and `{name}_outputs.json` when the split has golds) in LaMP's naming."""
    folder = Path(directory)
    written = [folder / f"{name}_questions.json"]
    write_questions(written[0], split.questions, indent=indent)
    if split.golds is not None:
        written.append(folder / f"{name}_outputs.json")
        write_outputs(written[1], split.task, split.golds, indent=indent)
    return written
