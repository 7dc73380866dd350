"""`tapper eval`: reading both files, the table, the JSON report, and one-line errors."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tapper.cli import evaluate

COPY_PREFIX = "Paraphrase the following tweet without any explanation before or after it: "


def _app() -> typer.Typer:
    # A callback keeps `eval` a named subcommand even when it is the only one registered.
    app = typer.Typer(add_completion=False)
    app.callback()(lambda: None)
    evaluate.register(app)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["eval", *map(str, args)])


def _outputs(path: Path, task: str, outputs: dict[str, str]) -> Path:
    path.write_text(json.dumps({"task": task, "golds": [{"id": k, "output": v} for k, v in outputs.items()]}))
    return path


def test_eval_prints_table_and_writes_json(tmp_path):
    golds = _outputs(tmp_path / "golds.json", "LaMP_3", {"a": "1", "b": "5", "c": "3"})
    preds = _outputs(tmp_path / "preds.json", "LaMP_3", {"a": "1", "b": "4", "c": "no idea"})
    result = _run("--golds", golds, "--preds", preds, "--json", tmp_path / "out" / "scores.json", "--ci")
    assert result.exit_code == 0, result.output
    assert "mae" in result.output and "rmse" in result.output and "95% CI" in result.output
    report = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert report["task"] == "LaMP_3" and report["questions"] == 3
    assert report["metrics"]["mae"] == pytest.approx((0 + 1 + 2) / 3)
    low, high = report["ci95"]["mae"]
    assert 0 <= low <= report["metrics"]["mae"] <= high <= 2


def test_task_option_overrides_the_files(tmp_path):
    golds = _outputs(tmp_path / "g.json", "LaMP_2", {"a": "politics"})
    preds = _outputs(tmp_path / "p.json", "LaMP_2N", {"a": "politics"})
    assert _run("--golds", golds, "--preds", preds).exit_code == 2  # the files disagree
    result = _run("--golds", golds, "--preds", preds, "--task", "2N", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["metrics"]["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("gold_records", "pred_text", "message"),
    [
        ([{"id": "a", "output": "x"}], "{not json", "p.json"),
        ([{"id": "a", "output": "x"}], json.dumps({"task": "LaMP_7", "golds": [{"id": "a"}]}), "'output'"),
        ([{"id": "a", "output": "x"}], json.dumps({"task": "LaMP_7", "golds": [{"id": "b", "output": "x"}]}),
         "'b'"),
    ],
)
def test_errors_are_one_line_naming_the_problem(tmp_path, gold_records, pred_text, message):
    golds = tmp_path / "g.json"
    golds.write_text(json.dumps({"task": "LaMP_7", "golds": gold_records}))
    preds = tmp_path / "p.json"
    preds.write_text(pred_text)
    result = _run("--golds", golds, "--preds", preds)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_missing_file_and_unknown_task_exit_2(tmp_path):
    golds = _outputs(tmp_path / "g.json", "LaMP_7", {"a": "x"})
    assert _run("--golds", golds, "--preds", tmp_path / "nope.json").exit_code == 2
    result = _run("--golds", golds, "--preds", golds, "--task", "LaMP_99")
    assert result.exit_code == 2 and "LaMP_99" in result.output


def test_rouge_is_unstemmed_unless_stemmed_is_asked(tmp_path):
    golds = _outputs(tmp_path / "g.json", "LaMP_7", {"a": "running dogs"})
    preds = _outputs(tmp_path / "p.json", "LaMP_7", {"a": "dogs run"})
    result = _run("--golds", golds, "--preds", preds, "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["metrics"] == {"rouge-1": 0.5, "rouge-L": 0.5}
    result = _run("--golds", golds, "--preds", preds, "--json", tmp_path / "s.json", "--stemmed", "--ci")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["metrics"] == {"rouge-1": 0.5, "rouge-L": 0.5, "rouge-1-stemmed": 1.0, "rouge-L-stemmed": 0.5}
    assert set(report["ci95"]) == set(report["metrics"])
    assert "rouge-1-stemmed" in result.output


@pytest.mark.slow
def test_lamp7_copying_the_input_tweet_scores_lamps_rouge(shared_data, tmp_path):
    # Copy-input on the 1,000 LaMP-7 dev users, as LaMP's evaluation scores it (unstemmed ROUGE, the mean of
    # the per-question F-measures): 0.4637 (DESIGN.md). Stemmed, the same predictions score 0.4814.
    questions = json.loads((shared_data / "lamp7" / "dev_questions.json").read_text())
    assert len(questions) == 1000
    assert all(q["input"].startswith(COPY_PREFIX) for q in questions)
    copies = {q["id"]: q["input"].removeprefix(COPY_PREFIX) for q in questions}
    preds = _outputs(tmp_path / "copy.json", "LaMP_7", copies)
    golds = shared_data / "lamp7" / "dev_outputs.json"
    result = _run("--golds", golds, "--preds", preds, "--json", tmp_path / "scores.json", "--stemmed")
    assert result.exit_code == 0, result.output
    assert "rouge-1" in result.output
    metrics = json.loads((tmp_path / "scores.json").read_text())["metrics"]
    assert round(metrics["rouge-1"], 4) == 0.4637
    assert round(metrics["rouge-1-stemmed"], 4) == 0.4814
