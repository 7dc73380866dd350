"""bench/quality.py's user choice on a built task: targets, stage-1 users and validation users never overlap, so a
setting chosen on the validation users has not looked at the targets or at stage 1's training data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fixtures_data import AMAZON_DUMP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quality import built_users  # noqa: E402  (a bench script: found through bench/ on sys.path)

pytestmark = pytest.mark.skipif(not AMAZON_DUMP.exists(), reason=f"{AMAZON_DUMP} not here")


def test_validation_users_are_disjoint_from_targets_and_stage1_and_have_a_history():
    targets, stage1, _, _ = built_users("LaMP_3", 69, 300, 0, 3)
    val, stage1_again, _, info = built_users("LaMP_3", 69, 300, 0, 3, n_val=40)
    users = lambda split: {q.user_id for q in split.questions}  # noqa: E731
    assert users(stage1_again) == users(stage1)  # the test run's stage 1, unchanged
    assert len(users(val)) == 40
    assert not users(val) & users(targets) and not users(val) & users(stage1)
    assert all(q.profile for q in val.questions)
    assert set(val.golds) == {q.id for q in val.questions}
    assert "validation_users" in info


def test_asking_for_more_validation_users_than_there_are_names_the_count():
    with pytest.raises(SystemExit, match="only 52 users"):
        built_users("LaMP_3", 69, 300, 0, 3, n_val=500)


def test_precision_parity_compares_two_quality_work_dirs_on_the_same_users(tmp_path: Path, monkeypatch):
    import json

    import precision_parity

    targets = built_users("LaMP_3", 69, 300, 0, 3)[0]
    ids = [q.id for q in targets.questions]
    for name, answers in (("fp32", {i: "5" for i in ids}), ("bf16", {i: ("4" if n < 10 else "5")
                                                                      for n, i in enumerate(ids)})):
        (tmp_path / name).mkdir()
        result = {"name": "TAP-PER", "metrics": {"mae": 0.0}, "train_seconds": 10.0, "predict_seconds": 1.0,
                  "predictions": answers}
        result["metrics"]["mae"] = sum(abs(float(answers[i]) - float(targets.golds[i])) for i in ids) / len(ids)
        (tmp_path / name / "result_tapper.json").write_text(json.dumps(result))
    (tmp_path / "bf16" / "result_other.json").write_text(json.dumps({**result, "name": "only in one run"}))
    monkeypatch.setattr(sys, "argv", ["precision_parity.py", "--task", "LaMP_3", "--users", "69", "--fp32",
                                      str(tmp_path / "fp32"), "--bf16", str(tmp_path / "bf16"), "--out",
                                      str(tmp_path / "out")])
    precision_parity.main()
    data = json.loads((tmp_path / "out" / "precision_parity_LaMP_3.json").read_text())
    (row,) = data["methods"]  # only the method both runs scored
    assert row["method"] == "TAP-PER" and row["same_answers"] == 59
    assert row["difference"] == row["mae_bf16"] - row["mae_fp32"]
    assert data["wall_seconds_fp32"] == data["wall_seconds_bf16"] == 11.0


def test_a_run_on_another_backbone_or_source_writes_results_of_its_own_name():
    from quality import run_label

    assert run_label("LaMP_3", None, "default") == run_label("LaMP_3", None, "SmolLM2") == "LaMP_3"
    assert run_label("LaMP_3", "magazine", "default") == "LaMP_3_magazine"
    assert run_label("LaMP_2N", None, "gemma3-270m") == "LaMP_2N_gemma3-270m"
    assert run_label("LaMP_3", None, "/models/My Model.gguf") == "LaMP_3_My-Model.gguf"
    assert run_label("LaMP_2", None, "default", "s2ep4") == "LaMP_2_s2ep4"
    assert run_label("LaMP_2N", None, "gemma3-270m", "beauty recipe") == "LaMP_2N_gemma3-270m_beauty-recipe"
