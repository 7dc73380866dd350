"""The README's main job, on the tiny backbone with a token budget: it trains, scores and reports every row."""

import json

from tapper.demo import run_demo

FAST = {"stage1_epochs": 0.1, "stage1_history_pairs": 0, "stage2_epochs": 0.5, "max_history_pairs": 2,
        "batch_size": 4, "show_progress": False}


def test_demo_reports_floors_and_methods(tmp_path):
    results = run_demo("tiny", tmp_path, train_overrides=FAST, target_users=4)
    names = [r.name for r in results]
    assert names[:3] == ["user's mean past rating (floor)", "always 5 (floor)",
                         "review text alone, exact (sample oracle)"]
    assert names[-3:] == ["non-personalized, same budget", "TAP-PER", "TAP-PER, int8 user table"]
    by_name = {r.name: r.metrics["mae"] for r in results}
    assert by_name["review text alone, exact (sample oracle)"] > 0.5  # the users' offsets are real
    summary = json.loads((tmp_path / "demo_results.json").read_text())
    assert [m["name"] for m in summary["methods"]] == names
    assert summary["methods"][-2]["per_user_params"] > 0
