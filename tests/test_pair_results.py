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
    # MAE: lower is better, so a is better on both questions that differ; the better of both is a's 0.0
    assert out["a_better"] == 2 and out["b_better"] == 0 and out["better_of_both"] == 0.0
    low, high = out["ci95"]
    assert low <= -1.5 <= high <= 0.0


def test_two_methods_right_on_different_questions_reach_more_together():
    golds = {"q1": "politics", "q2": "sports", "q3": "business", "q4": "politics"}
    a = {"q1": "politics", "q2": "sports", "q3": "politics", "q4": "sports"}
    b = {"q1": "politics", "q2": "politics", "q3": "business", "q4": "sports"}
    out = pair("LaMP_2N", golds, a, b, seed=0)
    assert out["score_a"] == out["score_b"] == 0.5 and out["difference"] == 0.0
    assert out["a_better"] == 1 and out["b_better"] == 1 and out["better_of_both"] == 0.75
    assert out["answers_differ"] == 2


def test_pair_refuses_results_made_on_other_users():
    with pytest.raises(SystemExit, match="1 scored users have no answer.*'q2'"):
        pair("LaMP_3", {"q1": "5", "q2": "1"}, {"q1": "5", "q2": "1"}, {"q1": "5"}, seed=0)


def _rating_split(ratings: dict[str, list[int]], golds: dict[str, str]):
    from tapper.data.records import LampSplit, Question

    questions = [Question(id=q, input="Rate this review: fine", user_id=q,
                          profile=[{"text": "x", "score": str(r)} for r in past]) for q, past in ratings.items()]
    return LampSplit("LaMP_3", questions, golds)


def test_a_floor_operand_is_made_on_the_same_users_and_named():
    from pair_results import load_answers

    target = _rating_split({"q1": [4, 4], "q2": [1, 2]}, {"q1": "4", "q2": "2"})
    name, answers = load_answers("floor:mean past", target, _rating_split({}, {}))
    assert name == "user's mean past rating (floor)"
    assert answers == {"q1": "4.000", "q2": "1.500"}
    name5, always5 = load_answers("floor:always 5", target, _rating_split({}, {}))
    assert always5 == {"q1": "5", "q2": "5"}


def test_a_floor_operand_that_names_no_floor_or_several_lists_the_task_floors(tmp_path: Path):
    from pair_results import load_answers

    target = _rating_split({"q1": [4]}, {"q1": "4"})
    with pytest.raises(SystemExit, match="no floor of LaMP_3 matches.*always 5"):
        load_answers("floor:majority", target, _rating_split({}, {}))
    with pytest.raises(SystemExit, match="more than one floor"):
        load_answers("floor:(floor)", target, _rating_split({}, {}))
    bad = tmp_path / "result_x.json"
    bad.write_text("{\"name\": \"x\"}")
    with pytest.raises(SystemExit, match="result_x.json: not a kept result"):
        load_answers(str(bad), target, _rating_split({}, {}))


def test_several_b_operands_each_pair_with_a_and_out_writes_one_row_per_pair(tmp_path: Path, monkeypatch):
    import json

    import pair_results

    target = _rating_split({"q1": [4], "q2": [1], "q3": [3]}, {"q1": "4", "q2": "1", "q3": "3"})
    monkeypatch.setattr(pair_results, "users", lambda args: (target, _rating_split({}, {})))
    monkeypatch.setattr(pair_results, "RESULTS", tmp_path)
    files = {}
    for name, answers in {"A": ["4", "1", "3"], "B": ["4", "2", "3"], "C": ["5", "5", "5"]}.items():
        files[name] = tmp_path / f"result_{name}.json"
        predictions = dict(zip(["q1", "q2", "q3"], answers, strict=True))
        files[name].write_text(json.dumps({"name": name, "predictions": predictions}))
    monkeypatch.setattr(sys, "argv", ["pair_results.py", "--task", "LaMP_3", "--out", "pairs_x",
                                      str(files["A"]), str(files["B"]), str(files["C"])])
    pair_results.main()
    kept = json.loads((tmp_path / "pairs_x.json").read_text())
    assert [p["b"].split(" ")[0] for p in kept["pairs"]] == ["B", "C"]
    assert [p["answers_differ"] for p in kept["pairs"]] == [1, 3]
    assert kept["pairs"][1]["difference"] == pytest.approx(-(1 + 4 + 2) / 3)  # MAE of A (0) minus C's
    table = (tmp_path / "pairs_x.md").read_text()
    assert table.count(f"| A ({files['A']}) |") == 2


def test_an_answers_operand_reads_one_method_of_a_tables_answers_file(tmp_path: Path):
    from pair_results import load_answers

    from tapper.compare.report import Report

    report = Report("quality_x", "x", {}, answers={"TAP-PER": {"q1": "4", "q2": "2"}, "PPlug": {"q1": "5", "q2": "5"}},
                    task="LaMP_3")
    path = next(p for p in report.write(tmp_path, command="x", commit="abc") if p.parent.name == "answers")
    target = _rating_split({"q1": [4], "q2": [1]}, {"q1": "4", "q2": "1"})
    name, answers = load_answers(f"{path}#PPlug", target, _rating_split({}, {}))
    assert name == f"PPlug ({path})" and answers == {"q1": "5", "q2": "5"}
    assert load_answers(f"{path}#TAP-PER", target, _rating_split({}, {}))[1] == {"q1": "4", "q2": "2"}
    with pytest.raises(SystemExit, match="no method 'RAG'.*'PPlug', 'TAP-PER'"):
        load_answers(f"{path}#RAG", target, _rating_split({}, {}))
    with pytest.raises(SystemExit, match="not an answers file"):
        load_answers(f"{tmp_path / 'quality_x.json'}#PPlug", target, _rating_split({}, {}))


def test_keep_answers_turns_kept_results_into_an_answers_file_that_pairs(tmp_path: Path):
    import json

    import keep_answers
    from pair_results import load_answers

    files = []
    for name, predictions in {"TAP-PER": {"q1": "4", "q2": "2"}, "OPPU": {"q1": "5", "q2": "1"}}.items():
        files.append(tmp_path / f"result_{name}.json")
        files[-1].write_text(json.dumps({"name": name, "predictions": predictions, "metrics": {}}))
    keep_answers.main(["--task", "LaMP_3", "--name", "quality_x", "--out", str(tmp_path / "res"),
                       *map(str, files)])
    path = tmp_path / "res" / "answers" / "quality_x.json"
    kept = json.loads(path.read_text())
    assert kept["task"] == "LaMP_3" and kept["kept_results"] == [str(f) for f in files]
    assert kept["methods"]["OPPU"] == {"task": "LaMP_3", "golds": [{"id": "q1", "output": "5"},
                                                                   {"id": "q2", "output": "1"}]}
    target = _rating_split({"q1": [4], "q2": [1]}, {"q1": "4", "q2": "1"})
    assert load_answers(f"{path}#TAP-PER", target, _rating_split({}, {}))[1] == {"q1": "4", "q2": "2"}
    with pytest.raises(SystemExit, match="a second result named 'OPPU'"):
        keep_answers.main(["--task", "LaMP_3", "--name", "y", "--out", str(tmp_path / "res"), str(files[1]),
                           str(files[1])])
