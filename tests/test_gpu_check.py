"""bench/gpu_check.py: the GPU measurement, run here on CPU with tiny shapes (no GPU on CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402  (a bench script: found through bench/ on sys.path)

from tapper.backbone import tiny_byte_tokenizer  # noqa: E402


def test_the_8b_shape_is_llama_3_8b():
    """Built on the meta device (no memory): the parameter count of Meta-Llama-3-8B, in bf16."""
    backbone = gpu_check.random_backbone("llama3-8b", tiny_byte_tokenizer(), "meta", torch.bfloat16, 0)
    params = list(backbone.model.parameters())
    assert sum(p.numel() for p in params) == 8_030_261_248
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert backbone.hidden_size == 4096


def test_cpu_tiny_run_writes_every_method(tmp_path):
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--shape", "tiny", "--tokenizer", "tiny",
           "--users", "2,3", "--new-tokens", "2", "--repeats", "1", "--out", str(tmp_path)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "--shape tiny" in data["command"] and data["device"] == "cpu" and data["users"] == [2, 3]
    for n in ("2", "3"):
        methods = data["measured"][n]
        assert set(methods) == {"TAP-PER", "OPPU mixed batch", "OPPU adapter per user"}
        for m in methods.values():
            assert m["seconds"] > 0 and m["tokens_per_second"] == int(n) * 2 / m["seconds"]
            assert m["peak_bytes"] is None  # CPU: not measured, and said so
    assert data["row_size"] == 8 * 64 and data["oppu_per_user_params"] > data["row_size"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "OPPU mixed batch" in table and "peak memory is not measured" in table
