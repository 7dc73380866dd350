"""bench/personal_signal.py: histories handed round fairly, the lookup scored from own and foreign histories."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from personal_signal import TaskUsers, handed_round, main, personal_signal, tapper_gap  # noqa: E402

from tapper.data.records import LampSplit, ProfileItem, Question  # noqa: E402


def news_split(past: dict[str, list[str]], golds: dict[str, str]) -> LampSplit:
    questions = [Question(q, "Which category does this article belong to? [x]",
                          [ProfileItem(f"{q}-{i}", {"text": "t", "category": c}, None, i) for i, c in enumerate(cs)],
                          user_id=q) for q, cs in past.items()]
    return LampSplit("LaMP_2N", questions, golds)


def test_handing_round_gives_nobody_their_own_history_and_uses_each_once():
    split = news_split({f"u{i}": [f"c{i}"] for i in range(7)}, {f"u{i}": "x" for i in range(7)})
    for seed in range(5):
        given = handed_round(split, seed)
        assert [q.id for q in given.questions] == [q.id for q in split.questions]
        owners = [q.profile[0].get("category") for q in given.questions]
        assert sorted(owners) == sorted(f"c{i}" for i in range(7))
        assert all(owner != f"c{q.id[1:]}" for q, owner in zip(given.questions, owners, strict=True))
    assert split.questions[0].profile[0].get("category") == "c0"  # the original is left alone


def test_personal_signal_scores_the_lookup_on_own_and_foreign_histories():
    # every user's gold is their own habit: the lookup is right on its own history, wrong on another's
    split = news_split({"a": ["travel", "travel"], "b": ["sports"], "c": ["crime", "crime", "travel"]},
                       {"a": "travel", "b": "sports", "c": "crime"})
    others = LampSplit("LaMP_2N", [], {"o1": "politics", "o2": "politics"})
    task = TaskUsers("x", "LaMP_2N", 3, "most frequent", "majority")
    got = personal_signal(split, others, task, draws=4, seed=0)
    assert got["own"] == 1.0 and got["other"] == 0.0 and got["blind"] == 0.0
    assert got["own_vs_other"]["difference"] == pytest.approx(1.0)
    assert got["own_vs_other"]["verdict"] == "ahead" and got["own_vs_blind"]["verdict"] == "ahead"
    assert got["blind_floor"] == "majority category, 'politics' (floor)"
    with pytest.raises(SystemExit, match="'floor:nothing like this': no floor of LaMP_2N matches"):
        personal_signal(split, others, TaskUsers("x", "LaMP_2N", 3, "nothing like this", "majority"), 1, 0)


def test_tapper_gap_reads_the_table_pair_or_says_none(tmp_path: Path):
    assert tapper_gap("LaMP_3", tmp_path) is None
    (tmp_path / "quality_LaMP_3.json").write_text(json.dumps({"task": "LaMP_3", "results": [
        {"method": "TAP-PER", "metrics": {"mae": 0.3}, "ci95": {"mae": [0.2, 0.4]},
         "paired": {"non-personalized, same budget": {"metric": "mae", "difference": -0.2, "ci95": [-0.3, -0.1]}}},
        {"method": "non-personalized, same budget", "metrics": {"mae": 0.5}, "ci95": {"mae": [0.4, 0.6]},
         "paired": {}}]}), encoding="utf-8")
    gap = tapper_gap("LaMP_3", tmp_path)
    assert gap["difference"] == pytest.approx(-0.2) and gap["ci95"] == [-0.3, -0.1] and gap["verdict"] == "ahead"


def test_unknown_labels_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--labels", "LaMP_9"])
    assert "unknown ['LaMP_9']" in capsys.readouterr().err
