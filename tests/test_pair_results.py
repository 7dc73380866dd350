"""bench/pair_results.py: two kept results paired on the same users, and a refusal when they were not made on
those users."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from pair_results import pair  # noqa: E402


def test_pair_scores_both_and_counts_the_answers_that_differ():
    golds = {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}
    a = {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}
    b = {"q1": "5", "q2": "5", "q3": "3", "q4": "2"}
    out = pair("LaMP_3", golds, a, b, seed=0)
    assert out["metric"] == "mae" and out["score_a"] == 0.0 and out["score_b"] == pytest.approx(1.5)
    assert out["difference"] == pytest.approx(-1.5) and out["answers_differ"] == 2 and out["users"] == 4
    low, high = out["ci95"]
    assert low <= -1.5 <= high <= 0.0


def test_pair_refuses_results_made_on_other_users():
    with pytest.raises(SystemExit, match="1 scored users have no answer.*'q2'"):
        pair("LaMP_3", {"q1": "5", "q2": "1"}, {"q1": "5", "q2": "1"}, {"q1": "5"}, seed=0)
