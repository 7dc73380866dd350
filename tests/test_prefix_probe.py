"""bench/prefix_probe.py: switching prefix parts off at inference scores what a model without them answers, and
leaves the trained model exactly as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from prefix_probe import AS_TRAINED, prefix_scale, probe, row_drift, rows_moved  # noqa: E402
from test_tapper_model import make_model, make_split, spiky_backbone  # noqa: E402

from tapper.experiment import evaluate_model  # noqa: E402


def test_probe_scores_each_switch_and_restores_the_model():
    model = make_model(spiky_backbone())
    target = make_split(4)
    weights = model.user_state.weight.detach().clone()
    as_is = evaluate_model(model, target, "x", show_progress=False).predictions

    rows = {r.name: r for r in probe(model, target)}

    assert list(rows) == [AS_TRAINED, "every user on the mean row", "P_u zero (P_q alone)", "P_q off (P_u alone)",
                          "no prefix (the bridge alone)"]
    assert rows[AS_TRAINED].answers == as_is
    assert torch.equal(model.user_state.weight.detach(), weights)
    assert model.config.use_user_state and model.config.use_query_prefix
    # the rows were spread on purpose (make_model), so the users' own rows answer differently from the mean row
    assert rows["every user on the mean row"].answers != as_is
    model.config.use_user_state = model.config.use_query_prefix = False
    bare = evaluate_model(model, target, "y", show_progress=False).predictions
    assert rows["no prefix (the bridge alone)"].answers == bare


def test_row_drift_reads_the_start_scale_and_a_saved_run_alike(tmp_path):
    model = make_model(spiky_backbone())  # rows spread to N(0, 1): far from the N(0, init_std) start
    drift = row_drift(model)
    assert drift["rows"] == 4
    assert drift["token_norm_mean"] > 5 * drift["token_norm_at_init"]
    model.save_pretrained(tmp_path / "run")
    assert rows_moved(tmp_path / "run") == drift


def test_prefix_scale_measures_each_part_against_the_word_embeddings():
    model = make_model(spiky_backbone())
    target = make_split(4)
    scale = prefix_scale(model, target)
    assert set(scale) == {"word embeddings", "P_u", "P_q", "P_u + P_q"}
    hidden = model.hidden
    rows = model.user_state.weight.detach().view(-1, hidden).norm(dim=-1)
    assert abs(scale["P_u"] - float(rows.median())) < 1e-5  # every row token, as the table holds it
    with torch.no_grad():  # a word scaled up reads larger: the measure follows the backbone's embedding
        model.hf_model.get_input_embeddings().weight.mul_(10.0)
    assert prefix_scale(model, target)["word embeddings"] > 9 * scale["word embeddings"]
    model.config.use_query_prefix = False
    assert "P_q" not in prefix_scale(model, target)
