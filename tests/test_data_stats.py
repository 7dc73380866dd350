"""Split statistics (tapper.data.stats)."""

from __future__ import annotations

import pytest
from fixtures_data import lamp_questions, write_json
from typer.testing import CliRunner

from tapper.cli import app
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.stats import split_stats, stats_rows


def _item(i: str, day: float | None, **fields) -> ProfileItem:
    return ProfileItem(id=i, fields={"text": "t", **fields}, day=day, position=0)


def _questions() -> list[Question]:
    return [
        Question(id="1", input="a", user_id="u1", day=18300.0,
                 profile=[_item("a", 18262.0, score="5"), _item("b", 18263.0, score="4"), _item("b", None, score="5")]),
        Question(id="2", input="b", user_id="u1", profile=[_item("c", 18270.0, score="1")]),
        Question(id="2", input="c", user_id="u2", profile=[]),
    ]


def test_stats_of_bare_questions():
    stats = split_stats(_questions())
    assert stats["task"] is None and stats["questions"] == 3 and stats["users"] == 2
    assert stats["profile_items"] == 4
    assert stats["profile_length"] == {"min": 0, "median": 1, "mean": 1.33, "max": 3}
    assert stats["dates"] == {"profile_items_dated": 0.75, "questions_dated": 0.3333,
                              "first": "2020-01-01", "last": "2020-01-09"}
    assert stats["duplicate_ids"] == {"questions": 1, "profile_items": 1}
    assert stats["profile_labels"] == {"score": {"1": 1, "4": 1, "5": 2}}
    assert "golds" not in stats


def test_gold_label_distribution_for_labelled_tasks():
    split = LampSplit(task="LaMP_3", questions=_questions()[:2], golds={"1": "5", "2": "3"})
    assert split_stats(split)["golds"] == {"count": 2, "distinct": 2, "labels": {"3": 1, "5": 1}}


def test_free_text_golds_get_word_counts():
    golds = {str(i): f"headline number {i} " + "word " * (i % 3) for i in range(30)}
    questions = [Question(id=str(i), input="x", user_id=str(i), profile=[]) for i in range(30)]
    stats = split_stats(LampSplit(task="LaMP_4", questions=questions, golds=golds))
    assert stats["golds"]["count"] == 30 and stats["golds"]["distinct"] == 30
    assert stats["golds"]["words"] == {"min": 3, "median": 4.0, "mean": 4.0, "max": 5}
    assert stats["dates"]["first"] is None and stats["profile_labels"] == {}


def test_stats_rows_flatten_for_a_table():
    rows = dict(stats_rows(split_stats(LampSplit(task="LaMP_3", questions=_questions()[:2],
                                                 golds={"1": "5", "2": "3"}))))
    assert rows["profile_length.max"] == "3"
    assert rows["golds.labels"] == "3: 1, 5: 1"
    assert rows["profile_labels.score"] == "1: 1, 4: 1, 5: 2"
    assert rows["dates.first"] == "2020-01-01"


def test_a_day_outside_the_date_range_does_not_crash_the_report():
    # Readers never make such a day (parse_date refuses it); code can, and the report must still come out.
    questions = [Question(id="1", input="a", user_id="u", profile=[_item("a", -1e6), _item("b", 18262.0)])]
    dates = split_stats(questions)["dates"]
    assert dates["first"].startswith("day -1000000.0 (outside 1000-01-01") and dates["last"] == "2020-01-01"


@pytest.mark.parametrize("date", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", -9e10])
def test_stats_cli_answers_a_date_out_of_range_with_one_line(tmp_path, date):
    records = lamp_questions(n_users=2)
    records[1]["profile"][0]["date"] = date
    result = CliRunner().invoke(app, ["data", "stats", str(write_json(tmp_path / "q.json", records))])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "record 1 (id '101') profile item 0 (id '1_3'), field 'date'" in result.output
    assert "outside the supported range" in result.output and "Traceback" not in result.output
