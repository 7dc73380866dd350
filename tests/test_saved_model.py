"""A saved run is self-contained: it reloads to the same model in a fresh process and checks its backbone.

Also: a finished train is not trained again, every step's loss is logged, and a retriever registered in one
process is found by import path in another."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tapper.backbone import Backbone, BackboneSpecError, _ready, tiny_backbone, tiny_byte_tokenizer
from tapper.data.lamp_io import read_split
from tapper.data.records import LampSplit
from tapper.data.sample import SAMPLE_DIR
from tapper.errors import BackboneMismatchError
from tapper.prefix import TapperModel
from tapper.prefix.model import BACKBONE_NAME, CONFIG_NAME, TASK_ADAPTER_DIR, TRAIN_CONFIG_NAME
from tapper.retrieval.base import UnknownRetrieverError, register_retriever
from tapper.train import LOSS_LOG_NAME, builder_for, resolve_configs, train_tapper

FAST = {"stage1_epochs": 0.25, "stage2_epochs": 1.0, "batch_size": 4, "max_history_pairs": 3,
        "show_progress": False, "checkpoint_every": 0}
USERS = 4


def splits() -> tuple[LampSplit, LampSplit]:
    other = read_split(SAMPLE_DIR / "train_questions.json", SAMPLE_DIR / "train_outputs.json", task="LaMP_3")
    target = read_split(SAMPLE_DIR / "test_questions.json", SAMPLE_DIR / "test_outputs.json", task="LaMP_3")
    target = LampSplit(target.task, target.questions[:USERS], target.golds)
    return other, target


def train_small(run: Path, backbone: Backbone | None = None, spec: str = "tiny", **train_overrides):
    tcfg, cfg = resolve_configs("LaMP_3", {"backbone": spec, "prefix_len": 2},
                                {**FAST, **train_overrides})
    other, target = splits()
    return train_tapper(run, other, target, tcfg, cfg, backbone=backbone)


def fingerprint(model: TapperModel, target: LampSplit) -> dict:
    """What the model computes on a fixed batch, exactly: loss bits, prefix bytes, greedy text."""
    builder = builder_for(model, model.config)
    examples = [builder.for_question(q, answer=target.gold(q.id)) for q in target.questions]
    model.eval()
    with torch.no_grad():
        loss, _ = model.loss(examples)
        prefix, _ = model.build_prefix(examples)
    return {"loss": float(loss).hex(), "prefix": prefix.numpy().tobytes().hex()[:4000] + str(prefix.sum().item()),
            "text": model.generate(examples, max_new_tokens=4, stop_at_newline=False)}


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    from tapper.prefix import TapperModel
    from test_saved_model import fingerprint, splits
    model = TapperModel.from_pretrained(sys.argv[1])
    print(json.dumps(fingerprint(model, splits()[1])))
""")


def in_fresh_process(run: Path, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parent), str(extra_path or ""), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(run), str(torch.get_num_threads())],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("saved") / "run"
    model = train_small(run)
    return run, model, fingerprint(model, splits()[1])


def test_from_pretrained_then_save_pretrained_is_self_contained_and_bitwise_in_a_fresh_process(trained, tmp_path):
    run, model, expected = trained
    export = tmp_path / "export"
    TapperModel.from_pretrained(run).save_pretrained(export)  # the path: reload, then save elsewhere
    for name in (CONFIG_NAME, TRAIN_CONFIG_NAME, BACKBONE_NAME, TASK_ADAPTER_DIR, "bridge",
                 "query_prefix.safetensors", "user_state"):
        assert (export / name).exists(), name
    assert json.loads((export / TRAIN_CONFIG_NAME).read_text()) == json.loads((run / TRAIN_CONFIG_NAME).read_text())
    # the trained model saved directly elsewhere carries its task LoRA too
    model.save_pretrained(tmp_path / "direct")
    assert (tmp_path / "direct" / TASK_ADAPTER_DIR / "adapter_model.safetensors").is_file()
    for folder in (export, tmp_path / "direct"):
        done = in_fresh_process(folder, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == expected, folder


def test_the_run_records_its_backbone(trained):
    run, _, _ = trained
    identity = json.loads((run / BACKBONE_NAME).read_text())
    assert identity["source"] == "tiny" and identity["digest"].startswith("sha256:")
    assert identity["architecture"]["hidden_size"] == 64
    assert json.loads((run / CONFIG_NAME).read_text())["backbone"] == "tiny"


def test_a_backbone_of_the_wrong_shape_is_refused(trained):
    from transformers import LlamaConfig, LlamaForCausalLM

    run, _, _ = trained
    tok = tiny_byte_tokenizer()
    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                          pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    other = _ready(narrow, tok, "narrow-llama", "cpu")
    with pytest.raises(BackboneMismatchError, match=r"hidden_size': 64.*hidden_size': 32|cannot fit"):
        TapperModel.from_pretrained(run, backbone=other, allow_other_backbone=True)


def test_other_weights_of_the_same_shape_are_refused_unless_allowed(trained, caplog):
    run, _, _ = trained
    with pytest.raises(BackboneMismatchError) as err:
        TapperModel.from_pretrained(run, backbone=tiny_backbone(seed=1))
    message = str(err.value)
    saved = json.loads((run / BACKBONE_NAME).read_text())["digest"]
    assert saved[:23] in message and "tiny-llama-seed1" in message and "allow_other_backbone" in message
    with caplog.at_level(logging.WARNING, logger="tapper"):
        TapperModel.from_pretrained(run, backbone=tiny_backbone(seed=1), allow_other_backbone=True)
    assert "other weights" in caplog.text


def test_a_model_passed_as_an_object_must_be_passed_again(tmp_path):
    run = tmp_path / "run"
    train_small(run, backbone=tiny_backbone(seed=3), stage1_epochs=0.1)
    assert json.loads((run / BACKBONE_NAME).read_text())["source"] is None
    assert "passed as an object" in json.loads((run / CONFIG_NAME).read_text())["backbone"]
    with pytest.raises(BackboneMismatchError, match="passed in as an object.*backbone="):
        TapperModel.from_pretrained(run)
    TapperModel.from_pretrained(run, backbone=tiny_backbone(seed=3))


def test_a_relative_model_path_is_recorded_absolute_and_a_moved_model_can_be_named(tmp_path, monkeypatch):
    bb = tiny_backbone(seed=0)
    (tmp_path / "work").mkdir()
    bb.model.save_pretrained(tmp_path / "work" / "models" / "mine")
    bb.tokenizer.save_pretrained(tmp_path / "work" / "models" / "mine")
    monkeypatch.chdir(tmp_path / "work")
    train_small(Path("run"), spec="models/mine", stage1_epochs=0.1)
    recorded = json.loads(Path("run", CONFIG_NAME).read_text())["backbone"]
    assert recorded == str((tmp_path / "work" / "models" / "mine").resolve())
    monkeypatch.chdir(tmp_path)
    TapperModel.from_pretrained(tmp_path / "work" / "run")  # from another folder
    (tmp_path / "work" / "models" / "mine").rename(tmp_path / "moved")
    with pytest.raises(BackboneSpecError, match="cannot be loaded here.*--model"):
        TapperModel.from_pretrained(tmp_path / "work" / "run")
    TapperModel.from_pretrained(tmp_path / "work" / "run", backbone=str(tmp_path / "moved"))


def test_a_finished_run_is_not_trained_again_unless_forced_or_changed(trained, caplog):
    run, _, _ = trained
    log_before = (run / LOSS_LOG_NAME).read_text()
    entries = [json.loads(line) for line in log_before.splitlines()]
    assert {e["stage"] for e in entries} == {"stage1", "stage2"}
    for stage in ("stage1", "stage2"):
        steps = [e["step"] for e in entries if e["stage"] == stage]
        assert steps == list(range(1, len(steps) + 1)) and all(isinstance(e["loss"], float) for e in entries)
    with caplog.at_level(logging.INFO, logger="tapper"):
        again = train_small(run)
    assert again.train_summary["status"] == "already finished"
    assert "already trained" in caplog.text
    assert (run / LOSS_LOG_NAME).read_text() == log_before  # nothing trained
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tapper"):
        changed = train_small(run, stage2_epochs=0.5)
    assert "stage2_epochs 1.0 -> 0.5" in caplog.text and "reusing" in caplog.text  # stage 1 reused, stage 2 redone
    assert changed.train_summary["stage1"]["status"] == "reused"
    assert changed.train_summary["stage2"]["status"] == "trained"
    stage2 = [json.loads(line) for line in (run / LOSS_LOG_NAME).read_text().splitlines()
              if json.loads(line)["stage"] == "stage2"]
    assert [e["step"] for e in stage2] == list(range(1, changed.train_summary["stage2"]["steps"] + 1))
    caplog.clear()
    tcfg, cfg = resolve_configs("LaMP_3", {"backbone": "tiny", "prefix_len": 2}, {**FAST, "stage2_epochs": 0.5})
    with caplog.at_level(logging.INFO, logger="tapper"):
        forced = train_tapper(run, *splits(), tcfg, cfg, force=True)  # same settings as the run now holds
    assert "(forced)" in caplog.text and forced.train_summary["stage2"]["status"] == "trained"
    train_small(run)  # back to the module's settings for the other tests


def test_progress_without_a_terminal_is_plain_lines(tmp_path, caplog):
    """Under pytest stderr is not a terminal: no tqdm bar, a log line every tenth of a stage instead."""
    with caplog.at_level(logging.INFO, logger="tapper"):
        train_small(tmp_path / "run", show_progress=True, stage1_epochs=0.1)
    lines = [r.getMessage() for r in caplog.records if "step" in r.getMessage() and "/" in r.getMessage()]
    assert any(m.startswith("stage 1 (task LoRA): step") for m in lines)
    assert any(m.startswith("stage 2 (prefixes): step") for m in lines)


RETRIEVER_MODULE = '''
class ShortestFirst:
    """Ranks records by length: a retriever that is not tapper's."""

    name = "shortest"

    def rank(self, query, docs, k):
        return sorted(range(len(docs)), key=lambda i: (len(docs[i]), -i))[:k]
'''


def test_a_registered_retriever_is_saved_by_import_path_and_found_in_a_fresh_process(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_retrievers.py").write_text(RETRIEVER_MODULE)
    monkeypatch.syspath_prepend(str(plugins))
    import my_retrievers

    register_retriever("shortest", my_retrievers.ShortestFirst)
    tcfg, cfg = resolve_configs("LaMP_3", {"backbone": "tiny", "prefix_len": 2, "retriever": "shortest"},
                                {**FAST, "stage1_epochs": 0.1})
    run = tmp_path / "run"
    trained = train_tapper(run, None, splits()[1], tcfg, cfg)
    assert json.loads((run / CONFIG_NAME).read_text())["retriever"] == "my_retrievers:ShortestFirst"
    done = in_fresh_process(run, cwd=tmp_path, extra_path=plugins)  # never registers "shortest"
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == fingerprint(trained, splits()[1])
    # without the module on the path: a clear error that names the import path
    with pytest.raises(UnknownRetrieverError, match="my_retrievers:Nope"):
        builder_for(trained, replace(trained.config, retriever="my_retrievers:Nope"))
