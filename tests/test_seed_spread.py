"""bench/seed_spread.py: per-seed gaps and per-method spread from kept answers, and clear refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from seed_spread import main, result_file, spread  # noqa: E402

GOLDS = {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}


def test_spread_pairs_a_with_b_in_each_seed_and_each_method_across_seeds():
    answers = {
        "0": {"tapper": {"q1": "5", "q2": "1", "q3": "3", "q4": "4"},      # MAE 0
              "nonpersonal": {"q1": "5", "q2": "5", "q3": "3", "q4": "4"}},  # MAE 1
        "1": {"tapper": {"q1": "5", "q2": "3", "q3": "3", "q4": "4"},      # MAE 0.5
              "nonpersonal": {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}},  # MAE 0
    }
    out = spread("LaMP_3", GOLDS, answers, "tapper", "nonpersonal")
    assert out["metric"] == "mae" and out["higher_is_better"] is False
    assert out["per_seed"]["0"]["scores"] == {"tapper": 0.0, "nonpersonal": 1.0}
    assert out["per_seed"]["0"]["gap"]["difference"] == pytest.approx(-1.0)
    assert out["per_seed"]["1"]["gap"]["difference"] == pytest.approx(0.5)
    assert out["gap"]["mean"] == pytest.approx(-0.25) and out["gap"]["same_sign"] is False
    tapper = out["per_method"]["tapper"]
    assert (tapper["min"], tapper["max"], tapper["mean"]) == (0.0, 0.5, 0.25)
    between = tapper["between_seeds"]["0 vs 1"]
    assert between["answers_differ"] == 1 and between["difference"] == pytest.approx(-0.5)


def test_a_seed_without_the_method_is_named(tmp_path: Path):
    with pytest.raises(SystemExit, match="result_tapper.json: no kept result of 'tapper'"):
        result_file(tmp_path, "tapper")


def test_one_seed_is_refused_before_any_data_is_read(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"0={tmp_path}"])
    assert "give at least two seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"0={tmp_path}", "--runs", f"0={tmp_path}"])
    assert "seed '0' given twice" in capsys.readouterr().err
