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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tapper.data.dates import DateError, format_day, parse_date
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import get_task
from tapper.io_utils import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "DateError", "JSONProblem", "LampFormatError", "format_day", "load_json", "parse_date", "parse_json_strict",
    "question_record", "read_golds", "read_questions", "read_split", "task_field_problem", "task_output_problem",
    "write_json_atomic", "write_outputs", "write_questions", "write_split", "write_text_atomic",
]

UNKNOWN_TASK = "unknown"

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


# ---------------------------------------------------------------------------------------------- strict JSON

MAX_JSON_DEPTH = 64  # LaMP files nest 5 levels, API bodies 4
MAX_NUMBER_CHARS = 64  # a number literal longer than this is refused (Python's int() stops at 4,300 digits)
JsonPath = tuple[str | int, ...]

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only a \uD8xx-\uDFxx escape can make one
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')


class JSONProblem(ValueError):
    """Strict JSON parsing failed.

    When the text parsed, `path` (keys and list indices from the top) locates the bad value and `document`
    is the parsed tree (with the bad value in place), so a caller can name the record and field. When it
    did not (bad syntax, absurd nesting), `line` and `column` say where, and `top_index` is the element
    of a top-level list that holds the spot (None when the top level is not a list or is not reached).
    """

    def __init__(
        self, problem: str, *, path: JsonPath | None = None, document: Any = None, line: int | None = None,
        column: int | None = None, top_index: int | None = None, syntax: bool = False,
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path
        self.document = document
        self.line = line
        self.column = column
        self.top_index = top_index
        self.syntax = syntax  # True: the text is not JSON at all (as opposed to JSON tapper refuses)


class _Bad:
    """Stands in for a value the JSON hooks refused, so the tree walk can report where it was."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            value = _Bad(f"key {key!r} appears twice in one object (JSON keys must be unique)")
        obj[key] = value
    return obj


def _constant(name: str) -> _Bad:
    return _Bad(f"{name} is not valid JSON (numbers must be finite)")


def _integer(text: str) -> int | _Bad:
    if len(text) > MAX_NUMBER_CHARS:
        return _Bad(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float | _Bad:
    if len(text) > MAX_NUMBER_CHARS:
        return _Bad(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        return _Bad(f"number {text} is out of range (not a finite 64-bit float)")
    return value


def parse_json_strict(text: str) -> Any:
    """json.loads, but refusing what json.loads lets through: repeated keys (the last would silently win),
    NaN / Infinity, numbers too long or too large for a float, lone UTF-16 surrogates, and nesting deeper
    than MAX_JSON_DEPTH. Every problem is a JSONProblem that says where."""
    try:
        document = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_int=_integer,
                              parse_float=_float)
    except json.JSONDecodeError as err:
        raise JSONProblem(f"invalid JSON: {err.msg}", line=err.lineno, column=err.colno, syntax=True) from None
    except RecursionError:
        line, column, top_index = _too_deep(text)
        raise JSONProblem(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", line=line, column=column,
                          top_index=top_index) from None
    _check_tree(document, check_surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return document


def _check_tree(document: Any, check_surrogates: bool) -> None:
    """Find the first refused value (a _Bad, a lone surrogate, a container nested too deep), if any."""
    stack: list[tuple[Any, JsonPath, int]] = [(document, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, _Bad):
            raise JSONProblem(value.problem, path=path, document=document)
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise JSONProblem("text holds a lone UTF-16 surrogate (not valid Unicode)", path=path,
                                  document=document)
            continue
        if isinstance(value, dict):
            children: list[tuple[str | int, Any]] = list(value.items())
            if check_surrogates:
                for key in value:
                    if _SURROGATE.search(key):
                        raise JSONProblem("a key holds a lone UTF-16 surrogate (not valid Unicode)",
                                          path=(*path, key), document=document)
        elif isinstance(value, list):
            children = list(enumerate(value))
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            raise JSONProblem(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", path=path, document=document)
        for key, child in reversed(children):
            if isinstance(child, dict | list | _Bad) or (check_surrogates and isinstance(child, str)):
                stack.append((child, (*path, key), depth + 1))


def _too_deep(text: str) -> tuple[int | None, int | None, int | None]:
    """(line, column, top-level list index) where the nesting first passes MAX_JSON_DEPTH."""
    depth = 0
    top_is_list = False
    top_index = 0
    for token in _TOKENS.finditer(text):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            if depth == 1:
                top_is_list = char == "["
            if depth > MAX_JSON_DEPTH:
                pos = token.start()
                line = text.count("\n", 0, pos) + 1
                column = pos - (text.rfind("\n", 0, pos) + 1) + 1
                return line, column, (top_index if top_is_list else None)
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 1 and top_is_list:
            top_index += 1
    return None, None, None


def json_path_text(path: JsonPath, shown: int = 12) -> str:
    """A path as a reader would write it: profile[2].score (keys that are not plain names are quoted);
    a path longer than `shown` steps keeps its first and last few."""
    if len(path) > shown:
        half = shown // 2
        return f"{json_path_text(path[:half])}...({len(path) - shown} more)...{json_path_text(path[-half:])}"
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            out += f".{key}" if out else key
        else:
            out += f"[{key!r}]"
    return out


# ---------------------------------------------------------------------------------------------- reading

# (JSON path, parsed document) -> (where, field, detail appended to the problem)
Describe = Callable[[JsonPath, Any], tuple[str, str | None, str]]


def load_json(path: str | os.PathLike[str], describe: Describe | None = None) -> Any:
    """Parse a UTF-8 JSON file strictly (parse_json_strict); every problem is a LampFormatError naming the
    file and the place: a line and column for bad syntax, or what `describe` makes of the JSON path
    (a record and field) for a value that parsed but is refused."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        where = f"line {line} (byte {err.start})"
        raise LampFormatError(path, where, None, "file is not valid UTF-8") from None
    try:
        return parse_json_strict(text)
    except JSONProblem as problem:
        if problem.path is not None:
            where, field, detail = (describe or _describe_any)(problem.path, problem.document)
            raise LampFormatError(path, where, field, problem.problem + detail) from None
        place = f"line {problem.line} column {problem.column}" if problem.line is not None else "top level"
        if problem.top_index is not None:
            place = f"record {problem.top_index} ({place})"
        raise LampFormatError(path, place, None, problem.problem) from None


def _describe_any(path: JsonPath, document: Any) -> tuple[str, str | None, str]:
    return ("top level" if not path else f"at {json_path_text(path)}"), None, ""


def _id_suffix(obj: Any) -> str:
    ident = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        return ""
    return f" (id {str(ident)!r})"


def _field_and_detail(rest: JsonPath) -> tuple[str | None, str]:
    if not rest or not isinstance(rest[0], str):
        return None, (f" (at {json_path_text(rest)})" if rest else "")
    deeper = rest[1:]
    return rest[0], (f" (at {json_path_text(rest)})" if deeper else "")


def _describe_questions(path: JsonPath, document: Any) -> tuple[str, str | None, str]:
    if not path or not isinstance(document, list) or not isinstance(path[0], int):
        return _describe_any(path, document)
    record = document[path[0]]
    where = f"record {path[0]}{_id_suffix(record)}"
    rest = path[1:]
    profile = record.get("profile") if isinstance(record, dict) else None
    if len(rest) >= 2 and rest[0] == "profile" and isinstance(rest[1], int) and isinstance(profile, list):
        where += f" profile item {rest[1]}{_id_suffix(profile[rest[1]])}"
        rest = rest[2:]
    field, detail = _field_and_detail(rest)
    return where, field, detail


def _describe_golds(path: JsonPath, document: Any) -> tuple[str, str | None, str]:
    golds = document.get("golds") if isinstance(document, dict) else None
    if len(path) >= 2 and path[0] == "golds" and isinstance(path[1], int) and isinstance(golds, list):
        field, detail = _field_and_detail(path[2:])
        return f"gold {path[1]}{_id_suffix(golds[path[1]])}", field, detail
    field, detail = _field_and_detail(path)
    return "top level", field, detail


# ---------------------------------------------------------------------------------------------- task checks

_RATING_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def _rating_problem(value: Any) -> str | None:
    """A LaMP-3 rating is a finite number from 1 to 5, as a number or a numeric string ("4", 4, 4.0)."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = None
    elif isinstance(value, str) and _RATING_TEXT.fullmatch(value.strip()):
        number = float(value.strip())
    if number is None or not math.isfinite(number) or not 1.0 <= number <= 5.0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:30] + "..."
        return f"expected a rating from 1 to 5 (a number or a numeric string), got {shown}"
    return None


# task name -> profile field -> check (None: fine, else the problem); applied when the task is known
_TASK_FIELD_CHECKS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "LaMP_3": {"score": _rating_problem},
}
# task name -> check of a gold output
_TASK_OUTPUT_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "LaMP_3": _rating_problem,
}


def task_field_problem(task: str, field: str, value: Any) -> str | None:
    """What is wrong with `value` as the `field` of a history record of `task`; None when nothing is
    (or when the task sets no rule for the field). KeyError for an unknown task."""
    check = _TASK_FIELD_CHECKS.get(get_task(task).name, {}).get(field)
    return None if check is None or value is None else check(value)


def task_output_problem(task: str, output: Any) -> str | None:
    """What is wrong with `output` as a gold answer of `task` (a LaMP-3 gold is a rating 1-5)."""
    check = _TASK_OUTPUT_CHECKS.get(get_task(task).name)
    return None if check is None else check(output)


# ---------------------------------------------------------------------------------------------- reading files


def read_questions(path: str | os.PathLike[str], task: str | None = None) -> list[Question]:
    """Read a LaMP questions file. With a task, also require that task's profile fields and apply its
    value rules (a LaMP-3 score is a rating from 1 to 5).

    Profile order: by (day, position) when every item has a date; when some lack one the file's order
    is kept (a warning counts them), since a guessed place for an undated record would be made up.
    """
    task_name = get_task(task).name if task is not None else None
    data = load_json(path, _describe_questions)
    if not isinstance(data, list):
        problem = f"expected a JSON list of questions, got {_kind(data)}"
        raise LampFormatError(path, "top level", None, problem)
    questions: list[Question] = []
    first_index: dict[str, int] = {}
    partly_dated = duplicate_item_ids = 0
    for index, record in enumerate(data):
        question, duplicates = _parse_question(path, index, record, task_name)
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
    path: str | os.PathLike[str], index: int, record: Any, task: str | None
) -> tuple[Question, int]:
    """One question, and how many of its profile item ids repeat an earlier one."""
    where = f"record {index}"
    if not isinstance(record, dict):
        raise LampFormatError(path, where, None, f"expected an object, got {_kind(record)}")
    qid = _nonblank(path, where, "id", _required_str(path, where, record, "id"))
    where = f"record {index} (id {qid!r})"
    text = _nonblank(path, where, "input", _required_str(path, where, record, "input"))
    profile = record.get("profile")
    if not isinstance(profile, list):
        problem = "missing" if "profile" not in record else f"expected a list, got {_kind(profile)}"
        raise LampFormatError(path, where, "profile", problem)
    user_id = _optional_id(path, where, record, "user_id")
    user_id = qid if user_id is None else _nonblank(path, where, "user_id", user_id)
    day = _date_of(path, where, record)
    items = [_parse_item(path, where, position, raw, task) for position, raw in enumerate(profile)]
    if all(item.day is not None for item in items):
        items.sort(key=lambda item: (item.day, item.position))
    duplicates = len(items) - len({item.id for item in items})
    extra = {key: value for key, value in record.items() if key not in ("id", "input", "profile", "user_id")}
    question = Question(id=qid, input=text, profile=items, user_id=user_id, day=day, extra=extra)
    return question, duplicates


def _parse_item(
    path: str | os.PathLike[str], owner: str, position: int, raw: Any, task: str | None
) -> ProfileItem:
    where = f"{owner} profile item {position}"
    if not isinstance(raw, dict):
        raise LampFormatError(path, where, None, f"expected an object, got {_kind(raw)}")
    item_id = _optional_id(path, where, raw, "id")
    if item_id is None:
        raise LampFormatError(path, where, "id", "missing")
    item_id = _nonblank(path, where, "id", item_id)
    where = f"{owner} profile item {position} (id {item_id!r})"
    for name in (get_task(task).profile_fields if task is not None else ()):
        if name not in raw or raw[name] is None:
            raise LampFormatError(path, where, name, "missing (required by the task)")
    for name, allowed in _FIELD_TYPES.items():
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            names = " or ".join(t.__name__ for t in allowed)
            raise LampFormatError(path, where, name, f"expected {names}, got {_kind(value)}")
    if task is not None:
        for name, value in raw.items():
            problem = task_field_problem(task, name, value)
            if problem is not None:
                raise LampFormatError(path, where, name, f"{problem} ({task})")
    fields = {key: value for key, value in raw.items() if key != "id"}
    return ProfileItem(id=item_id, fields=fields, day=_date_of(path, where, raw), position=position)


def read_golds(path: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """Read a LaMP outputs file (golds or predictions): the task name and {question id: output}."""
    data = load_json(path, _describe_golds)
    if not isinstance(data, dict):
        raise LampFormatError(path, "top level", None, f"expected an object, got {_kind(data)}")
    task = _nonblank(path, "top level", "task", _required_str(path, "top level", data, "task"))
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
        gid = _nonblank(path, where, "id", _required_str(path, where, record, "id"))
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
    by the outputs file is accepted with a warning, its profile fields unchecked. The golds of a known
    task follow its rules (a LaMP-3 gold is a rating from 1 to 5).
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
    if golds is not None and known:
        assert outputs_path is not None and name is not None
        for index, (gid, output) in enumerate(golds.items()):
            problem = task_output_problem(name, output)
            if problem is not None:
                raise LampFormatError(outputs_path, f"gold {index} (id {gid!r})", "output",
                                      f"{problem} ({_canonical_task(name)})")
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


def _nonblank(path: str | os.PathLike[str], where: str, name: str, value: str) -> str:
    if not value.strip():
        raise LampFormatError(path, where, name, "empty (it needs at least one non-space character)")
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
    except DateError as err:
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
