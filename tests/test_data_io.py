"""Reading, validating and writing LaMP files (tapper.data.lamp_io)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from fixtures_data import lamp_questions, write_json

from tapper.data import dates, lamp_io
from tapper.data.lamp_io import (
    DateError,
    LampFormatError,
    format_day,
    parse_date,
    read_golds,
    read_questions,
    read_split,
    write_outputs,
    write_questions,
)
from tapper.data.records import ProfileItem, Question

# ---------------------------------------------------------------------------------------------- dates


@pytest.mark.parametrize(("value", "expected"), [
    ("1970-01-01", 0.0),
    ("2018-05-26", 17677.0),
    ("2018-05-26T12:00:00", 17677.5),
    ("2018-05-26 12:00:00", 17677.5),
    ("2018-05-26T14:00:00+02:00", 17677.5),  # zone -> UTC
    ("2018-05-26T12:00:00Z", 17677.5),
    (1472688000, 17045.0),  # Amazon unixReviewTime
    (1472688000.0, 17045.0),
    ("1472688000", 17045.0),
    (43200, 0.5),
    ("09 1, 2016", 17045.0),  # Amazon reviewTime
    ("12 31, 1999", 10956.0),
    ("2011", 14975.0),
    (2011, 14975.0),
    (" 2018-05-26 ", 17677.0),
])
def test_parse_date_forms(value, expected):
    assert parse_date(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_parse_date_missing_is_none(value):
    assert parse_date(value) is None


@pytest.mark.parametrize("value", ["yesterday", "2018-13-01", "31/12/2018", True, [2018], {"y": 1},
                                   float("nan"), 1472688000000, "13 45, 2016"])
def test_parse_date_rejects(value):
    with pytest.raises(DateError):
        parse_date(value)


@pytest.mark.parametrize(("value", "fragment"), [
    ("0001-01-01T00:00:00+05:00", "outside the supported range"),  # was an OverflowError
    ("9999-12-31T23:00:00-05:00", "outside the supported range"),  # was an OverflowError
    (-9e10, "outside the supported range"),  # was accepted, then crashed format_day
    ("0999-12-31", "outside the supported range"),
    ("0000", "outside the supported range"),
    ("01 1, 0001", "outside the supported range"),
    (10**400, "too large"),  # float(int) would overflow
    ("1" * 5000, "5000 characters"),
    (float("inf"), "not a finite"),
    ("1e999", "not a finite"),
])
def test_parse_date_out_of_range_is_a_clear_date_error(value, fragment):
    with pytest.raises(DateError, match=fragment):
        parse_date(value)


def test_the_range_ends_are_dates_and_format_back():
    first, last = parse_date("1000-01-01"), parse_date("9999-12-31T23:59:59")
    assert (first, last) == (dates.MIN_DAY, dates.MAX_DAY)
    assert format_day(first) == "1000-01-01" and format_day(last) == "9999-12-31T23:59:59"
    assert parse_date("9999-12-31T23:59:59Z") == last
    for day in (dates.MIN_DAY - 1e-3, dates.MAX_DAY + 1e-3, float("nan")):
        with pytest.raises(DateError):
            format_day(day)


def test_format_day_round_trips():
    for day in (0.0, 17677.0, 17677.5, -365.0):
        assert parse_date(format_day(day)) == pytest.approx(day)
    assert format_day(17677.0) == "2018-05-26"
    assert format_day(17677.5) == "2018-05-26T12:00:00"


# ---------------------------------------------------------------------------------------------- reading


def test_read_questions_parses_and_sorts_by_date(tmp_path):
    path = write_json(tmp_path / "q.json", lamp_questions(n_users=2, n_items=4))
    questions = read_questions(path, task="LaMP_3")
    assert [q.id for q in questions] == ["100", "101"]
    q = questions[0]
    assert q.user_id == "100" and q.day is None and q.extra == {}
    # The file lists items newest first; the profile comes back oldest first, positions keep file order.
    assert [item.id for item in q.profile] == ["0_0", "0_1", "0_2", "0_3"]
    assert [item.position for item in q.profile] == [3, 2, 1, 0]
    assert [item.day for item in q.profile] == [18262.0, 18263.0, 18264.0, 18265.0]
    assert q.profile[0].fields == {"text": "réview 0 of user 0", "score": "1", "date": "2020-01-01"}
    assert q.profile[0].text == "réview 0 of user 0"


def test_same_day_items_keep_file_order(tmp_path):
    record = {"id": "1", "input": "x", "profile": [
        {"id": "b", "text": "t", "date": "2020-01-02"},
        {"id": "a1", "text": "t", "date": "2020-01-01"},
        {"id": "a2", "text": "t", "date": "2020-01-01"},
    ]}
    (question,) = read_questions(write_json(tmp_path / "q.json", [record]))
    assert [item.id for item in question.profile] == ["a1", "a2", "b"]


def test_partly_dated_profile_keeps_file_order_and_warns(tmp_path, caplog):
    record = {"id": "1", "input": "x", "profile": [
        {"id": "late", "text": "t", "date": "2020-01-05"},
        {"id": "undated", "text": "t"},
        {"id": "early", "text": "t", "date": "2020-01-01"},
    ]}
    with caplog.at_level(logging.WARNING, logger="tapper.data.lamp_io"):
        (question,) = read_questions(write_json(tmp_path / "q.json", [record]))
    assert [item.id for item in question.profile] == ["late", "undated", "early"]
    assert [item.day is None for item in question.profile] == [False, True, False]
    assert "1 question(s) mix dated and undated" in caplog.text


def test_int_ids_user_id_date_and_extra(tmp_path):
    record = {"id": "7", "input": "x", "user_id": 42, "date": "2019-05-01", "lang": "en",
              "profile": [{"id": 3, "text": "t", "score": 5, "asin": ["B1"]}]}
    (question,) = read_questions(write_json(tmp_path / "q.json", [record]))
    assert question.user_id == "42"
    assert question.day == parse_date("2019-05-01")
    assert question.extra == {"date": "2019-05-01", "lang": "en"}
    item = question.profile[0]
    assert item.id == "3" and item.fields == {"text": "t", "score": 5, "asin": ["B1"]} and item.day is None


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "q.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(lamp_questions(1, 1)).encode())
    assert len(read_questions(path)) == 1


def _questions_file(tmp_path: Path, mutate) -> Path:
    records = lamp_questions(n_users=3, n_items=3)
    mutate(records)
    return write_json(tmp_path / "bad_questions.json", records)


def _set(path: tuple, value):
    """A mutation that sets records[...][...] = value (or deletes the key when value is _DELETE)."""
    def mutate(records):
        target = records
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


_DELETE = object()


@pytest.mark.parametrize(("mutate", "where", "field"), [
    (_set((1,), "not an object"), "record 1", None),
    (_set((1, "id"), _DELETE), "record 1", "'id'"),
    (_set((1, "id"), 101), "record 1", "'id'"),
    (_set((1, "input"), _DELETE), "record 1 (id '101')", "'input'"),
    (_set((1, "input"), ["x"]), "record 1 (id '101')", "'input'"),
    (_set((1, "profile"), _DELETE), "record 1 (id '101')", "'profile'"),
    (_set((1, "profile"), {"id": "x"}), "record 1 (id '101')", "'profile'"),
    (_set((1, "profile", 2), "text"), "record 1 (id '101') profile item 2", None),
    (_set((1, "profile", 2, "id"), _DELETE), "record 1 (id '101') profile item 2", "'id'"),
    (_set((1, "profile", 2, "id"), 1.5), "record 1 (id '101') profile item 2", "'id'"),
    (_set((1, "profile", 2, "text"), 12), "record 1 (id '101') profile item 2 (id '1_0')", "'text'"),
    (_set((1, "profile", 2, "score"), True), "record 1 (id '101') profile item 2 (id '1_0')", "'score'"),
    (_set((1, "profile", 2, "date"), "someday"), "record 1 (id '101') profile item 2 (id '1_0')", "'date'"),
    (_set((1, "date"), "someday"), "record 1 (id '101')", "'date'"),
    (_set((1, "user_id"), ["u"]), "record 1 (id '101')", "'user_id'"),
    (_set((2, "id"), "100"), "record 2 (id '100')", "'id'"),  # duplicate question id
    (_set((1, "id"), ""), "record 1", "'id'"),  # empty ids and inputs
    (_set((1, "id"), "  "), "record 1", "'id'"),
    (_set((1, "input"), ""), "record 1 (id '101')", "'input'"),
    (_set((1, "input"), " \n"), "record 1 (id '101')", "'input'"),
    (_set((1, "user_id"), ""), "record 1 (id '101')", "'user_id'"),
    (_set((1, "profile", 2, "id"), ""), "record 1 (id '101') profile item 2", "'id'"),
    (_set((1, "profile", 2, "date"), "0001-01-01T00:00:00+05:00"), "record 1 (id '101') profile item 2 (id '1_0')",
     "'date'"),
    (_set((1, "date"), -9e10), "record 1 (id '101')", "'date'"),
])
def test_bad_questions_name_file_record_and_field(tmp_path, mutate, where, field):
    path = _questions_file(tmp_path, mutate)
    with pytest.raises(LampFormatError) as info:
        read_questions(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert where in message
    if field is not None:
        assert f"field {field}" in message
    assert info.value.field == (None if field is None else field.strip("'"))


BASE_ITEM = '{"id": "a", "text": "t", "score": "4", "date": "2020-01-01"'


def _one_item_file(tmp_path: Path, item_json: str, question_extra: str = "") -> Path:
    path = tmp_path / "raw_questions.json"
    path.write_text(f'[{{"id": "q1", "input": "x"{question_extra}, "profile": [{item_json}]}}]', encoding="utf-8")
    return path


@pytest.mark.parametrize(("item", "field", "fragment"), [
    (BASE_ITEM + ', "score": "5"}', "score", "appears twice"),  # the last value would win silently
    (BASE_ITEM + ', "text": "u"}', "text", "appears twice"),
    ('{"id": "a", "text": "t", "score": NaN}', "score", "NaN is not valid JSON"),
    ('{"id": "a", "text": "t", "score": Infinity}', "score", "Infinity is not valid JSON"),
    ('{"id": "a", "text": "t", "score": -Infinity}', "score", "-Infinity is not valid JSON"),
    ('{"id": "a", "text": "t", "score": 1e400}', "score", "out of range"),
    ('{"id": "a", "text": "t", "score": ' + "9" * 5000 + "}", "score", "5000 characters"),
    ('{"id": "a", "text": "caf\\udce9", "score": "4"}', "text", "lone UTF-16 surrogate"),
    ('{"id": "a", "text": "t", "score": "4", "asin": ["ok", "\\ud800"]}', "asin", "at asin[1]"),
    ('{"id": "a", "text": "t", "score": "4", "deep": ' + "[" * 80 + "]" * 80 + "}", "deep", "nested deeper than 64"),
])
def test_json_that_python_lets_through_is_refused_with_file_record_and_field(tmp_path, item, field, fragment):
    path = _one_item_file(tmp_path, item)
    with pytest.raises(LampFormatError) as info:
        read_questions(path)
    assert str(info.value).startswith(f"{path}: record 0 (id 'q1') profile item 0 (id 'a'), field {field!r}: ")
    assert fragment in str(info.value) and info.value.field == field


def test_nesting_too_deep_for_json_loads_names_the_record_and_position(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('[{"id": "1", "input": "x", "profile": []}, ' + "[" * 50_000 + "]" * 50_000 + "]")
    with pytest.raises(LampFormatError) as info:
        read_questions(path)  # json.loads itself would raise RecursionError
    assert str(info.value).startswith(f"{path}: record 1 (line 1 column ")
    assert "nested deeper than 64 levels" in str(info.value)


def test_a_surrogate_pair_is_fine_and_a_repeated_key_in_golds_is_named(tmp_path):
    path = _one_item_file(tmp_path, '{"id": "a", "text": "smile \\ud83d\\ude00", "score": "4"}')
    (question,) = read_questions(path, task="LaMP_3")
    assert question.profile[0].text == "smile \U0001F600"
    golds = tmp_path / "o.json"
    golds.write_text('{"task": "LaMP_3", "golds": [{"id": "1", "output": "4", "output": "5"}]}')
    with pytest.raises(LampFormatError) as info:
        read_golds(golds)
    assert str(info.value).startswith(f"{golds}: gold 0 (id '1'), field 'output': key 'output' appears twice")
    golds.write_text('{"task": "LaMP_3", "task": "LaMP_7", "golds": []}')
    with pytest.raises(LampFormatError, match="top level, field 'task': key 'task' appears twice"):
        read_golds(golds)


@pytest.mark.parametrize("score", ['"five"', "7", "0", '"0.5"', '"NaN"', '"Infinity"', '"inf"', '"4 stars"', '""',
                                   '"\u0665"'])
def test_a_lamp3_score_is_a_rating_from_1_to_5(tmp_path, score):
    path = _one_item_file(tmp_path, f'{{"id": "a", "text": "t", "score": {score}}}')
    read_questions(path)  # without a task nothing says what a score is
    read_questions(path, task="LaMP_7")
    with pytest.raises(LampFormatError) as info:
        read_questions(path, task="LaMP_3")
    assert info.value.field == "score" and "rating from 1 to 5" in str(info.value)


@pytest.mark.parametrize("score", ['"1"', '"5"', "3", "4.5", '" 2 "', '"4.0"'])
def test_lamp3_ratings_that_are_fine(tmp_path, score):
    path = _one_item_file(tmp_path, f'{{"id": "a", "text": "t", "score": {score}}}')
    assert len(read_questions(path, task="LaMP_3")) == 1


def test_lamp3_golds_are_ratings_too(tmp_path):
    q = write_json(tmp_path / "q.json", lamp_questions(n_users=2))
    o = write_json(tmp_path / "o.json", {"task": "LaMP_3", "golds": [{"id": "100", "output": "4"},
                                                                     {"id": "101", "output": "six"}]})
    with pytest.raises(LampFormatError) as info:
        read_split(q, o)
    assert str(info.value).startswith(f"{o}: gold 1 (id '101'), field 'output': expected a rating from 1 to 5")
    assert read_golds(o)[1]["101"] == "six"  # a predictions file may hold anything: only golds are checked


def test_duplicate_question_id_names_first_record(tmp_path):
    path = _questions_file(tmp_path, _set((2, "id"), "100"))
    with pytest.raises(LampFormatError, match="first used by record 0"):
        read_questions(path)


def test_task_required_profile_fields(tmp_path):
    path = _questions_file(tmp_path, _set((0, "profile", 1, "score"), _DELETE))
    read_questions(path)  # without a task, score is optional
    read_questions(path, task="LaMP_7")  # LaMP-7 needs only text
    with pytest.raises(LampFormatError) as info:
        read_questions(path, task="LaMP_3")
    assert "record 0 (id '100') profile item 1 (id '0_1')" in str(info.value)
    assert "field 'score'" in str(info.value) and "required by the task" in str(info.value)


@pytest.mark.parametrize(("content", "where"), [
    (b'[{"id": "1", "input": "x", "profile": []},\n  {"id": ', "line 2"),
    (b"", "line 1"),
    (b'[{"id": "1", "input": "caf\xe9", "profile": []}]', "line 1 (byte 26)"),
])
def test_bad_bytes_and_json_name_the_position(tmp_path, content, where):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(LampFormatError) as info:
        read_questions(path)
    assert str(info.value).startswith(f"{path}: {where}")


@pytest.mark.parametrize("top", [{"id": "1"}, "questions", 3, None])
def test_top_level_must_be_a_list(tmp_path, top):
    path = write_json(tmp_path / "q.json", top)
    with pytest.raises(LampFormatError, match="top level: expected a JSON list"):
        read_questions(path)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_questions(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------- golds


def _golds(ids=("100", "101", "102")) -> dict:
    return {"task": "LaMP_3", "golds": [{"id": i, "output": "4"} for i in ids]}


def test_read_golds(tmp_path):
    task, golds = read_golds(write_json(tmp_path / "o.json", _golds()))
    assert task == "LaMP_3" and golds == {"100": "4", "101": "4", "102": "4"}


@pytest.mark.parametrize(("obj", "where", "field"), [
    ([], "top level", None),
    ({"golds": []}, "top level", "task"),
    ({"task": 3, "golds": []}, "top level", "task"),
    ({"task": "LaMP_3"}, "top level", "golds"),
    ({"task": "LaMP_3", "golds": {"1": "2"}}, "top level", "golds"),
    ({"task": "LaMP_3", "golds": [{"id": "1", "output": "2"}, "x"]}, "gold 1", None),
    ({"task": "LaMP_3", "golds": [{"output": "2"}]}, "gold 0", "id"),
    ({"task": "LaMP_3", "golds": [{"id": 1, "output": "2"}]}, "gold 0", "id"),
    ({"task": "LaMP_3", "golds": [{"id": "1"}]}, "gold 0 (id '1')", "output"),
    ({"task": "LaMP_3", "golds": [{"id": "1", "output": 2}]}, "gold 0 (id '1')", "output"),
    ({"task": "LaMP_3", "golds": [{"id": "1", "output": "2"}, {"id": "1", "output": "3"}]}, "gold 1 (id '1')", "id"),
])
def test_bad_golds_name_file_record_and_field(tmp_path, obj, where, field):
    path = write_json(tmp_path / "bad_outputs.json", obj)
    with pytest.raises(LampFormatError) as info:
        read_golds(path)
    assert str(info.value).startswith(f"{path}: {where}")
    assert info.value.field == field


# ---------------------------------------------------------------------------------------------- splits


def test_read_split_matches_questions_and_golds(tmp_path):
    q = write_json(tmp_path / "q.json", lamp_questions())
    split = read_split(q, write_json(tmp_path / "o.json", _golds()), task="lamp3")
    assert split.task == "LaMP_3" and len(split.questions) == 3 and split.gold("101") == "4"
    assert read_split(q, write_json(tmp_path / "o2.json", _golds())).task == "LaMP_3"
    assert read_split(q).task == lamp_io.UNKNOWN_TASK and read_split(q).golds is None


def test_read_split_names_missing_and_orphan_golds(tmp_path):
    q = write_json(tmp_path / "q.json", lamp_questions())
    missing = write_json(tmp_path / "missing.json", _golds(("100", "102")))
    with pytest.raises(LampFormatError, match=r"no gold for 1 question id\(s\) \('101'\)"):
        read_split(q, missing)
    orphan = write_json(tmp_path / "orphan.json", _golds(("100", "101", "102", "999")))
    with pytest.raises(LampFormatError, match=r"gold for 1 question id\(s\) \('999'\) has no question"):
        read_split(q, orphan)


def test_read_split_task_mismatch(tmp_path):
    q = write_json(tmp_path / "q.json", lamp_questions())
    o = write_json(tmp_path / "o.json", _golds())
    with pytest.raises(LampFormatError) as info:
        read_split(q, o, task="LaMP_7")
    assert str(info.value).startswith(f"{o}: top level, field 'task'")


def test_read_split_checks_the_gold_files_task_fields(tmp_path):
    records = lamp_questions()
    del records[0]["profile"][0]["score"]
    q = write_json(tmp_path / "q.json", records)
    with pytest.raises(LampFormatError, match="field 'score'"):
        read_split(q, write_json(tmp_path / "o.json", _golds()))


# ---------------------------------------------------------------------------------------------- writing


def test_round_trip_is_exact(tmp_path):
    records = lamp_questions()
    records[0].update({"user_id": "alice", "date": "2020-02-01", "lang": "fr"})
    records[1]["profile"][0]["id"] = 77
    records[2]["profile"][1]["date"] = 1577923200  # unix seconds stay verbatim
    first = read_questions(write_json(tmp_path / "q.json", records))
    write_questions(tmp_path / "again.json", first)
    second = read_questions(tmp_path / "again.json")
    assert second == first
    write_questions(tmp_path / "third.json", second)
    assert (tmp_path / "third.json").read_bytes() == (tmp_path / "again.json").read_bytes()
    assert "réview" in (tmp_path / "again.json").read_text(encoding="utf-8")  # ensure_ascii=False


def test_lamp7_round_trip(tmp_path):
    from fixtures_data import LAMP7_DEV

    if not LAMP7_DEV.exists():
        pytest.skip("shared data not present")
    split = read_split(LAMP7_DEV / "dev_questions.json", LAMP7_DEV / "dev_outputs.json")
    assert split.task == "LaMP_7" and len(split.questions) == 1000
    assert all(item.day is None for q in split.questions for item in q.profile)
    write_questions(tmp_path / "q.json", split.questions)
    write_outputs(tmp_path / "o.json", split.task, split.golds)
    again = read_split(tmp_path / "q.json", tmp_path / "o.json")
    assert again == split


def test_written_questions_from_objects(tmp_path):
    question = Question(id="q1", input="in", user_id="u9", day=18262.5, profile=[
        ProfileItem(id="b", fields={"text": "second"}, day=18262.0, position=1),
        ProfileItem(id="a", fields={"text": "first"}, day=None, position=0),
    ])
    write_questions(tmp_path / "q.json", [question])
    (record,) = json.loads((tmp_path / "q.json").read_text())
    assert record == {"id": "q1", "input": "in", "user_id": "u9", "date": "2020-01-01T12:00:00",
                      "profile": [{"id": "a", "text": "first"}, {"id": "b", "text": "second", "date": "2020-01-01"}]}


def test_write_outputs_format(tmp_path):
    write_outputs(tmp_path / "p.json", "LaMP_3", {"1": "5", "2": "ünïcode"})
    assert json.loads((tmp_path / "p.json").read_text(encoding="utf-8")) == {
        "task": "LaMP_3", "golds": [{"id": "1", "output": "5"}, {"id": "2", "output": "ünïcode"}]}
    assert read_golds(tmp_path / "p.json") == ("LaMP_3", {"1": "5", "2": "ünïcode"})


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "o.json"
    write_outputs(target, "LaMP_3", {"1": "5"})
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(target, "LaMP_3", {"1": "1", "2": "2"})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_read_split_unknown_tasks(tmp_path, caplog):
    q = write_json(tmp_path / "q.json", lamp_questions())
    with pytest.raises(KeyError, match="unknown task 'LaMP_99'"):
        read_split(q, task="LaMP_99")
    other = write_json(tmp_path / "o.json", {"task": "LaMP_99", "golds": _golds()["golds"]})
    with caplog.at_level(logging.WARNING, logger="tapper.data.lamp_io"):
        assert read_split(q, other).task == "LaMP_99"
    assert "not registered" in caplog.text
