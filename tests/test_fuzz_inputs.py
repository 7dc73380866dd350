"""Property-based fuzzing (hypothesis) of everything that reads outside input.

- The LaMP readers, on mutations of the built-in sample (values swapped for hostile ones, keys dropped or
  repeated, numbers made absurd, bytes broken, nesting deepened): a file is either read (and then its stats
  come out and it writes back to an equal split) or refused with a LampFormatError that names the file.
  Nothing else may escape.
- The date parser: a day number inside the documented range that formats and parses back, None, or a
  DateError; never another exception.
- POST /v1/users/{id}/records, in process, over the fake engine: 200, 409 or 422, never a 500; a refused
  request leaves the store exactly as it was, and an accepted one stores what it said it stored.

Each test runs a fixed, derandomized set of cases (no example database is written) and prints its tally by
outcome (`pytest -s` shows it). TAPPER_FUZZ_CASES=3000 runs more.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapper.data import dates
from tapper.data.dates import DateError, format_day, parse_date
from tapper.data.lamp_io import LampFormatError, read_split, write_split
from tapper.data.sample import SAMPLE_DIR
from tapper.data.stats import split_stats, stats_rows

CASES = int(os.environ.get("TAPPER_FUZZ_CASES", "300"))  # more for a one-off deeper run, e.g. 3000
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TRICKY_DATES = [
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59", "9999-12-31T23:59:59-00:01",
    "1000-01-01", "1000-01-01T00:00:00+00:01", "0999-12-31", "0000", "2020-02-30", "02 30, 2020", "01 1, 0001",
    "2020-01-01T25:00", "1e5", "-0", "", " ", "2020", "NaN", "inf", "-9e10", "yesterday", "2018-W21-6",
    -9e10, 9e10, 1e11, 1e11 + 1, -1e11, 2020, 999, 10_000, 0, -1, 0.5, 1e300, 10**30, True,
]
HOSTILE_TEXT = ["", " ", "\t\n", "five", "NaN", "Infinity", "-inf", "4", "5.0", "0", "6", "\ud800", "x\udfffy",
                "\x00", "é", "\U0001F600", "a" * 300]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-10**70, 10**70), st.floats(),
    st.text(max_size=20), st.sampled_from(TRICKY_DATES), st.sampled_from(HOSTILE_TEXT),
)
VALUES = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=6,
)


KNOWN_FIELDS = {"id", "input", "profile", "user_id", "date", "text", "score", "task", "golds", "output"}


def _sample(users: int = 3) -> tuple[list, dict]:
    questions = json.loads((SAMPLE_DIR / "test_questions.json").read_text(encoding="utf-8"))[:users]
    golds = json.loads((SAMPLE_DIR / "test_outputs.json").read_text(encoding="utf-8"))
    ids = {q["id"] for q in questions}
    golds["golds"] = [g for g in golds["golds"] if g["id"] in ids]
    for question in questions:
        question["profile"] = question["profile"][:4]  # small files: many cases per second
    return questions, golds


def _nodes(doc, path=()) -> list[tuple]:
    """Every (path) in the tree, containers and leaves."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _nodes(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _nodes(value, (*path, index))
    return out


def _mutate_tree(data: st.DataObject, doc):
    """Replace, delete or add one value somewhere in the tree (in place; returns the new root)."""
    path = data.draw(st.sampled_from(_nodes(doc)), label="path")
    op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
    if not path:
        return data.draw(VALUES, label="root") if op == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "replace":
        parent[last] = data.draw(VALUES, label="value")
    elif op == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        name = data.draw(st.sampled_from(["id", "input", "profile", "score", "text", "date", "user_id", "task",
                                          "golds", "output", "extra"]), label="name")
        parent[name] = data.draw(VALUES, label="value")
    else:
        parent.insert(last, data.draw(VALUES, label="value"))
    return doc


_KEY = re.compile(r'"([A-Za-z_]+)": ')
_NUMBER = re.compile(r"(?<![\w.\"])-?\d+(\.\d+)?([eE][+-]?\d+)?")
_STRING_START = re.compile(r'(?<=[:\[,] )"')


def _mutate_text(data: st.DataObject, text: str) -> str:
    """Changes that only raw JSON text can carry."""
    op = data.draw(st.sampled_from(["none", "repeat key", "bad number", "deep", "surrogate", "byte", "cut"]),
                   label="text op")

    def spot(pattern: re.Pattern) -> re.Match | None:
        found = list(pattern.finditer(text))
        return data.draw(st.sampled_from(found), label="spot") if found else None

    if op == "repeat key" and (m := spot(_KEY)):
        value = json.dumps(data.draw(SCALARS, label="value"), allow_nan=True)
        return text[: m.start()] + f'"{m.group(1)}": {value}, ' + text[m.start():]
    if op == "bad number" and (m := spot(_NUMBER)):
        new = data.draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000, "-0", "1e-400"]))
        return text[: m.start()] + new + text[m.end():]
    if op == "deep" and (m := spot(_NUMBER)):
        depth = data.draw(st.sampled_from([10, 70, 5000]), label="depth")
        return text[: m.start()] + "[" * depth + "1" + "]" * depth + text[m.end():]
    if op == "surrogate" and (m := spot(_STRING_START)):
        escape = data.draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000"]), label="escape")
        return text[: m.end()] + escape + text[m.end():]
    if op == "byte" and text:
        at = data.draw(st.integers(0, len(text) - 1), label="at")
        char = data.draw(st.sampled_from(list('{}[],:"\\\x00\xff') + ["\udcff"]), label="char")
        return text[:at] + char + text[at + 1:]
    if op == "cut" and text:
        return text[: data.draw(st.integers(0, len(text) - 1), label="cut at")]
    return text


def test_fuzz_readers_read_or_refuse_with_a_lamp_format_error(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_readers")
    questions_path, outputs_path = folder / "q_questions.json", folder / "q_outputs.json"
    tally: Counter[str] = Counter()

    @FUZZ
    @given(st.data())
    def one_case(data: st.DataObject) -> None:
        questions, golds = _sample()
        target = data.draw(st.sampled_from(["questions", "outputs"]), label="file")
        for _ in range(data.draw(st.integers(0, 2), label="tree edits")):
            if target == "questions":
                questions = _mutate_tree(data, questions)
            else:
                golds = _mutate_tree(data, golds)
        texts = {"questions": json.dumps(questions, allow_nan=True, ensure_ascii=data.draw(st.booleans())),
                 "outputs": json.dumps(golds, allow_nan=True)}
        texts[target] = _mutate_text(data, texts[target])
        questions_path.write_bytes(texts["questions"].encode("utf-8", "surrogatepass"))
        outputs_path.write_bytes(texts["outputs"].encode("utf-8", "surrogatepass"))
        task = data.draw(st.sampled_from([None, "LaMP_3"]), label="task")
        try:
            split = read_split(questions_path, outputs_path, task=task)
        except LampFormatError as err:
            assert str(err).startswith((str(questions_path), str(outputs_path))), err
            field = err.field if err.field in KNOWN_FIELDS else "another key" if err.field else None
            tally[f"refused: field {field}" if field else "refused: no field (syntax, encoding, shape)"] += 1
            return
        tally["read"] += 1
        stats_rows(split_stats(split))  # the report of anything read never crashes
        again = folder / "again"
        write_split(again, "x", split)
        assert read_split(again / "x_questions.json", again / "x_outputs.json", task=task) == split

    one_case()
    print(f"\nreaders fuzz: {sum(tally.values())} cases: {dict(tally.most_common())}")
    assert sum(tally.values()) >= CASES // 2
    assert tally["read"] > 0 and sum(tally.values()) > tally["read"]  # both outcomes were reached


OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
DATE_INPUTS = st.one_of(
    SCALARS, st.floats(-2e11, 2e11), st.integers(-2 * 10**11, 2 * 10**11),
    st.datetimes(timezones=st.none() | OFFSETS).map(lambda moment: moment.isoformat()),
    st.from_regex(r"\A\d{1,2} \d{1,2}, \d{4}\Z"), st.from_regex(r"\A[+-]?\d{1,13}(\.\d{0,4})?\Z"),
)


def test_fuzz_dates_are_a_day_in_range_none_or_a_date_error():
    tally: Counter[str] = Counter()

    @FUZZ
    @given(DATE_INPUTS)
    def one_case(value) -> None:
        try:
            day = parse_date(value)
        except DateError:
            tally["DateError"] += 1
            return
        if day is None:
            tally["no date"] += 1
            return
        tally["day"] += 1
        assert dates.MIN_DAY <= day <= dates.MAX_DAY
        assert abs(parse_date(format_day(day)) - day) < 1.0 / 86400  # written back to the second

    one_case()
    print(f"\ndate fuzz: {sum(tally.values())} cases: {dict(tally)}")
    assert tally["day"] > 0 and tally["DateError"] > 0


@FUZZ
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS))
def test_an_iso_datetime_is_read_exactly_when_its_utc_moment_is_in_range(moment):
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    if dates.MIN_MOMENT <= utc <= dates.MAX_MOMENT:
        assert parse_date(moment.isoformat()) == pytest.approx((utc - dates.EPOCH).total_seconds() / 86400)
    else:
        with pytest.raises(DateError, match="outside the supported range"):
            parse_date(moment.isoformat())


# ---- the records endpoint ----------------------------------------------------------------------------------

RECORD_FIELDS = ["id", "text", "title", "abstract", "description", "label", "tag", "category", "score", "date"]


VALID_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20).filter(
    str.strip)


@st.composite
def valid_record(draw) -> dict:
    record = {"id": draw(st.sampled_from(["r1", "r2", "r3", "r4"])), "text": draw(VALID_TEXT)}
    if draw(st.booleans()):
        record["score"] = draw(st.sampled_from([1, 2, 3, 4, 5, "4", 4.5, "1.0"]))
    if draw(st.booleans()):
        record["date"] = draw(st.sampled_from(["2020-01-02", 1_600_000_000, "2011", "09 1, 2016",
                                               "2020-01-02T10:00:00+05:00", "9999-12-31T23:59:59"]))
    return record


@st.composite
def record_bodies(draw) -> bytes:
    """Well-formed requests, the same with one hostile value, with a raw-text edit, or anything at all."""
    mode = draw(st.sampled_from(["valid", "valid", "one hostile value", "text edit", "anything"]), label="mode")
    records = draw(st.lists(valid_record(), min_size=1, max_size=4), label="records")
    if mode == "one hostile value":
        record = draw(st.sampled_from(records))
        record[draw(st.sampled_from([*RECORD_FIELDS, "typo"]))] = draw(VALUES)
    body = draw(VALUES, label="body") if mode == "anything" else {"records": records}
    text = json.dumps(body, allow_nan=True)
    if mode == "text edit":
        text = _mutate_text(draw(st.data()), text)
    return text.encode("utf-8", "surrogatepass")


# mostly a fresh user, sometimes one of two users that earlier cases wrote to (repeats, conflicts), and
# sometimes an id the path refuses
USERS = st.one_of(st.from_regex(r"\Au[0-9]{1,6}\Z"), st.from_regex(r"\Au[0-9]{1,6}\Z"),
                  st.sampled_from(["ann", "bob"]), st.sampled_from(["x" * 129, "a b", "ünï", "a:b@c", "-"]))


def _snapshot(store) -> tuple:
    with store.db.transaction(read_only=True) as cur:
        users = cur.execute("SELECT tenant, user_id, history_version, next_position FROM users ORDER BY user_id").all()
        records = cur.execute("SELECT uid, record_id, fields, day FROM records ORDER BY uid, record_id").all()
    return tuple(map(tuple, users)), tuple(map(tuple, records))


def test_fuzz_the_records_endpoint_never_fails_and_stores_nothing_it_refused(tmp_path):
    from fastapi.testclient import TestClient
    from test_serve_support import FakeEngine

    from tapper.data.tasks import get_task
    from tapper.serve import ServeConfig, create_api_key, create_app
    from tapper.store import UserStore

    store = UserStore(f"sqlite:///{tmp_path / 'fuzz.db'}")
    key = create_api_key(store, "acme")
    app = create_app(FakeEngine(), store, get_task("LaMP_3"), ServeConfig(max_body_bytes=64 * 1024))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    tally: Counter[str] = Counter()

    with TestClient(app, raise_server_exceptions=False) as client:

        @FUZZ
        @given(body=record_bodies(), user=USERS)
        def one_case(body: bytes, user: str) -> None:
            before = _snapshot(store)
            reply = client.post(f"/v1/users/{user}/records", content=body, headers=headers)
            tally[str(reply.status_code)] += 1
            assert reply.status_code in (200, 409, 413, 422), (reply.status_code, reply.text, body[:300])
            if reply.status_code != 200:
                assert _snapshot(store) == before  # nothing of a refused request was stored
                detail = reply.json()["detail"]
                if reply.status_code == 422:
                    assert detail and all(d["loc"][0] in ("body", "path") for d in detail)
                return
            sent = json.loads(body)["records"]
            out = reply.json()
            assert out["added"] + out["duplicates"] == len(sent)
            head = store.user_head("acme", user)
            assert head is not None and out["total"] == head.record_count
            stored = {item.id: item for item in store.load_history(head.uid)[1]}
            for record in sent:
                assert stored[record["id"]].fields["text"] == record["text"]

        one_case()
    store.close()
    print(f"\nrecords endpoint fuzz: {sum(tally.values())} cases: {dict(tally.most_common())}")
    assert tally["200"] > 0 and tally["422"] > 0 and "500" not in tally
