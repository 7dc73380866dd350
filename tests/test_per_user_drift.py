"""bench/per_user_drift.py: the update norm of each kept LoRA is ||(alpha/r) B A||_F, per-user ones give their
median, TAP-PER's rows their per-token norm; a bad runs dir is named in the error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import per_user_drift  # noqa: E402
from per_user_drift import DriftError, drift_of_run, lora_update_norm  # noqa: E402
from test_tapper_model import make_model, spiky_backbone  # noqa: E402

KEY = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"


def lora(scale: float, layers: int = 2, r: int = 2, d: int = 4) -> dict[str, torch.Tensor]:
    """B A = scale * (ones(d, r) @ eye(r, d)) per layer: each update has Frobenius norm scale * sqrt(r * d)."""
    out = {}
    for i in range(layers):
        out[KEY.format(i, "A")] = torch.eye(r, d).contiguous()
        out[KEY.format(i, "B")] = torch.full((d, r), scale)
    return out


def test_the_update_norm_is_the_scaled_product_over_every_projection(tmp_path: Path):
    w = lora(0.5)
    # two layers, each ||0.5 * ones(4, 2) @ eye(2, 4)||_F = 0.5 * sqrt(8); alpha / r = 4 / 2
    assert lora_update_norm(w, alpha=4, r=2, where=tmp_path) == pytest.approx(2 * 0.5 * (8 * 2) ** 0.5)
    assert lora_update_norm(lora(0.0), alpha=4, r=2, where=tmp_path) == 0.0  # B = 0: LoRA's start
    del w[KEY.format(1, "B")]
    with pytest.raises(DriftError, match="has no matching lora_B"):
        lora_update_norm(w, 4, 2, tmp_path)


def test_a_runs_dir_reports_rows_shared_and_per_user_parts(tmp_path: Path):
    runs = tmp_path / "runs"
    make_model(spiky_backbone()).save_pretrained(runs / "tapper")  # rows spread to N(0, 1)
    bridge = runs / "nonpersonal" / "bridge"
    bridge.mkdir(parents=True)
    save_file(lora(1.0), bridge / "adapter_model.safetensors")
    (bridge / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    users = runs / "oppu" / "users"
    users.mkdir(parents=True)
    for name, scale in (("a", 0.01), ("b", 0.02), ("c", 0.04)):
        save_file(lora(scale), users / f"{name}.safetensors")
    (runs / "oppu" / "baseline_config.json").write_text(json.dumps({"r": 2, "alpha": 2}))

    parts = drift_of_run(runs)

    one = 8 ** 0.5 * 2 ** 0.5  # lora(1.0) with alpha / r = 1
    assert parts["control's bridge LoRA (all target users)"]["value"] == pytest.approx(one)
    oppu = parts["OPPU LoRA, one per user"]
    assert oppu["users"] == 3 and oppu["value"] == pytest.approx(0.02 * one)  # the median user
    assert oppu["min"] == pytest.approx(0.01 * one) and oppu["max"] == pytest.approx(0.04 * one)
    rows = parts["TAP-PER user rows (P_u), per token"]
    assert rows["users"] == 4 and rows["value"] > 5 * rows["at_init"]
    assert "PER-PCS sharer's pieces, one per sharer" not in parts  # not run: not reported

    per_user_drift.main(["--runs", f"T={runs}", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "per_user_drift.md").read_text()
    assert "| T | OPPU LoRA, one per user | 3 |" in md
    per_user_drift.main(["--runs", f"T={runs}", "--out", str(tmp_path / "out"), "--name", "drift_other"])
    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    assert table((tmp_path / "out" / "drift_other.md").read_text()) == table(md)


def test_an_empty_or_unnamed_runs_dir_is_an_error(tmp_path: Path):
    with pytest.raises(DriftError, match=str(tmp_path)):
        drift_of_run(tmp_path)
    with pytest.raises(SystemExit, match=str(tmp_path)):
        per_user_drift.main(["--runs", f"T={tmp_path}", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        per_user_drift.main(["--runs", str(tmp_path)])
