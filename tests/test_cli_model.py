"""`tapper train -> predict -> onboard -> eval` end to end on the tiny backbone and the built-in sample."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import tapper.data.sample as sample_module
from tapper.cli import app
from tapper.data.lamp_io import read_golds
from tapper.prefix.model import TapperModel

SAMPLE = Path(sample_module.__file__).parent / "sample"
FAST = ["--set", "stage2_epochs=0.25", "--set", "stage1_epochs=0.25", "--set", "batch_size=4",
        "--set", "max_history_pairs=2", "--set", "onboard_steps=2", "--set", "show_progress=false"]


def test_train_predict_onboard_eval(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "train", "--task", "LaMP_3", "--questions", str(SAMPLE / "test_questions.json"), "--out", str(run),
        "--stage1-questions", str(SAMPLE / "train_questions.json"),
        "--stage1-outputs", str(SAMPLE / "train_outputs.json"), "--model", "tiny", "--max-users", "6", *FAST,
    ])
    assert res.exit_code == 0, res.output
    for name in ("tapper_config.json", "train_config.json", "query_prefix.safetensors", "task_adapter",
                 "bridge", "user_state/users.json"):
        assert (run / name).exists(), name
    assert not (run / "checkpoints" / "stage2").exists()  # cleaned once the stage completed

    preds = tmp_path / "preds.json"
    res = runner.invoke(app, ["predict", "--run", str(run), "--questions", str(SAMPLE / "test_questions.json"),
                              "--out", str(preds)])
    assert res.exit_code == 0, res.output
    task, outputs = read_golds(preds)
    assert task == "LaMP_3" and len(outputs) == 32
    assert "26 users without a row" in res.output

    before = TapperModel.from_pretrained(run).user_state
    newcomer = json.loads((SAMPLE / "test_questions.json").read_text())[-1]["id"]  # beyond --max-users 6
    res = runner.invoke(app, ["onboard", "--run", str(run), "--questions", str(SAMPLE / "test_questions.json"),
                              "--users", newcomer, "--steps", "2"])
    assert res.exit_code == 0, res.output
    after = TapperModel.from_pretrained(run).user_state
    assert len(after) == len(before) + 1
    assert (after.weight[: len(before)] == before.weight).all()  # existing rows untouched
    res = runner.invoke(app, ["onboard", "--run", str(run), "--questions", str(SAMPLE / "test_questions.json"),
                              "--users", newcomer, "--steps", "2", "--lr", "-0.1"])
    assert res.exit_code != 0 and "--lr -0.1" in res.output
    res = runner.invoke(app, ["onboard", "--run", str(run), "--questions", str(SAMPLE / "test_questions.json"),
                              "--users", newcomer, "--steps", "2", "--lr", "0.5"])  # a refresh at another rate
    assert res.exit_code == 0, res.output
    refreshed = TapperModel.from_pretrained(run).user_state
    assert len(refreshed) == len(after)
    first_move = (after.weight[-1] - before.mean_row()).norm()  # the fit at the run's own rate (3e-3)
    assert (refreshed.weight[-1] - after.weight[-1]).norm() > 10 * first_move  # 0.5 moves it much further

    res = runner.invoke(app, ["eval", "--golds", str(SAMPLE / "test_outputs.json"), "--preds", str(preds)])
    assert res.exit_code == 0, res.output
    assert "mae" in res.output.lower()


def test_train_rejects_unknown_override(tmp_path):
    res = CliRunner().invoke(app, [
        "train", "--task", "LaMP_3", "--questions", str(SAMPLE / "test_questions.json"), "--out", str(tmp_path),
        "--model", "tiny", "--set", "no_such_option=1",
    ])
    assert res.exit_code != 0
    assert "no_such_option" in res.output


def test_train_reports_malformed_questions(tmp_path):
    bad = tmp_path / "bad_questions.json"
    bad.write_text('[{"id": "1", "input": "x"}]')
    res = CliRunner().invoke(app, ["train", "--task", "LaMP_3", "--questions", str(bad), "--out",
                                   str(tmp_path / "r"), "--model", "tiny"])
    assert res.exit_code == 2
    assert "bad_questions.json" in res.output and "profile" in res.output


def test_train_set_values_take_their_field_types(tmp_path):
    # "--set use_bridge=no" once became the string "no", which is true: the ablation trained the full model.
    run = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "--task", "LaMP_3", "--questions", str(SAMPLE / "test_questions.json"), "--out", str(run),
        "--model", "tiny", "--max-users", "2", *FAST, "--set", "use_bridge=no", "--set", "prefix_len=2",
        "--set", "stage2_epochs=0.1",
    ])
    assert res.exit_code == 0, res.output
    config = json.loads((run / "tapper_config.json").read_text())
    assert config["use_bridge"] is False and config["prefix_len"] == 2
    assert json.loads((run / "train_config.json").read_text())["stage2_epochs"] == 0.1


def test_train_bad_set_value_is_a_usage_error_naming_it(tmp_path):
    res = CliRunner().invoke(app, [
        "train", "--task", "LaMP_3", "--questions", str(SAMPLE / "test_questions.json"), "--out", str(tmp_path),
        "--model", "tiny", "--set", "prefix_len=abc",
    ])
    assert res.exit_code == 2
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    text = " ".join(res.output.replace("\u2502", " ").split())  # the message as one line, out of rich's box
    assert "prefix_len='abc': TapperConfig.prefix_len takes an integer" in text
    assert not any(tmp_path.iterdir())  # nothing was trained or written
