"""`tapper export` + PromptEmbedder: plain transformers, generating greedily from the prompt embeddings on the
exported (merged) model, answers what TapperEngine answers, token for token, in a batch and alone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tapper.backbone import tiny_backbone
from tapper.cli import app
from tapper.data.records import ProfileItem
from tapper.engine import GenerationRequest, TapperEngine
from tapper.export import PREFIX_INFO_NAME, PromptEmbedder, export_run, pad_left, request_embeddings
from tapper.lora import add_lora
from tapper.prefix.model import TASK_ADAPTER_DIR, TapperModel
from tapper.train import init_run

NEW_TOKENS = 12
USERS = ["ann", "bob", "cyd"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny LaMP-3 run whose every merged part is non-zero: a random task LoRA, a random bridge and
    user rows large enough that each user's answer is their own."""
    root = tmp_path_factory.mktemp("export")
    run = init_run(root / "run", backbone="tiny", task="LaMP_3")
    gen = torch.Generator().manual_seed(7)
    task = add_lora(tiny_backbone(seed=0).model, r=8, alpha=16, dropout=0.0)
    with torch.no_grad():
        for name, p in task.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    task.save_pretrained(str(run / TASK_ADAPTER_DIR))
    model = TapperModel.from_pretrained(run)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
        for user in USERS:
            model.user_state.set_row(user, torch.randn(model.row_size, generator=gen) * 0.5)
    model.save_pretrained(run)
    return run


def history(user: str) -> list[ProfileItem]:
    texts = ["works great, would buy again", "broke after a week", "smells lovely", "too sticky for me"]
    return [ProfileItem(id=f"{user}-{i}", fields={"text": f"{user} says {t}", "score": str(1 + (i * 2) % 5)},
                        day=19000.0 + 7 * i, position=i) for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def requests(run):
    table = TapperModel.from_pretrained(run).user_state
    reqs = [GenerationRequest(u, f"What is the score of the following review on a scale of 1 to 5? review: {u} "
                                 "tried it", history(u), table.rows([u])[0].detach().clone()) for u in USERS]
    reqs.append(GenerationRequest("newcomer", "What is the score of the following review? review: fine", history("x")))
    reqs.append(GenerationRequest("nobody", "What is the score of the following review? review: meh"))
    return reqs


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_run(run, tmp_path_factory.mktemp("out") / "merged")


def plain_generate(model, tokenizer, embeds: list[torch.Tensor], stop_ids: list[int]) -> list[list[int]]:
    """Plain transformers: greedy from inputs_embeds, left-padded with the pad token's embedding."""
    pad = model.get_input_embeddings().weight[tokenizer.pad_token_id]
    inputs, mask = pad_left(embeds, pad)
    out = model.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                         num_beams=1, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    return [[t for t in row.tolist() if t != tokenizer.pad_token_id] for row in out]


def engine_tokens(engine: TapperEngine, requests: list[GenerationRequest]) -> list[list[int]]:
    """The token ids the engine generated (its results carry text: the ids are caught on their way out)."""
    hf = engine.model.hf_model
    caught = []
    original = hf.generate

    def spy(*args, **kwargs):
        caught.append(original(*args, **kwargs))
        return caught[-1]

    hf.generate = spy
    try:
        engine.generate(requests, max_new_tokens=NEW_TOKENS)
    finally:
        del hf.generate
    pad = engine.model.tokenizer.pad_token_id
    return [[t for t in row.tolist() if t != pad] for row in caught[0]]


def test_export_is_a_standard_hf_folder_with_its_prefix_description(exported, run):
    model = AutoModelForCausalLM.from_pretrained(exported)
    info = json.loads((exported / PREFIX_INFO_NAME).read_text())
    assert info["prefix_len"] == 8 and info["hidden_size"] == 64 and info["row_size"] == 512
    assert info["merged"] == {"task_lora": True, "bridge": True}
    assert info["rows"]["users_in_table"] == len(USERS) and info["task"] == "LaMP_3"
    assert not any("lora" in name for name, _ in model.named_parameters())
    # the merges changed the weights: the exported attention projections are not the backbone's
    base = dict(tiny_backbone(seed=0).model.named_parameters())
    merged = dict(model.named_parameters())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(base[q], merged[q])


def test_plain_transformers_from_prompt_embeds_answers_as_the_engine(run, exported, requests):
    engine = TapperEngine(TapperModel.from_pretrained(run))
    embedder = PromptEmbedder.from_export(exported)
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    stop_ids = embedder.info["generation"]["stop_token_ids"]

    embeds = embedder.embed(requests)
    assert [e.shape[0] for e in embeds] == [
        8 + len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]) for ex in embedder.examples(requests)]
    # the embedder's tensors are bit-equal to those built from the engine's own model and examples
    default = engine.default_row()
    rows = torch.stack([default if r.user_row is None else r.user_row for r in requests])
    examples = [engine.builder.for_query(r.user_id, r.input, r.history, query_day=r.query_day) for r in requests]
    for a, b in zip(embeds, request_embeddings(engine.model, examples, rows), strict=True):
        assert torch.equal(a, b)

    with torch.no_grad():
        batch = plain_generate(model, tokenizer, embeds, stop_ids)
    expected = engine_tokens(engine, requests)
    assert batch == expected
    assert sum(len(t) for t in expected) > 2 * len(requests)  # real answers, not all empty
    assert len({tuple(t) for t in expected[:len(USERS)]}) > 1  # each user's prefix shows in the answer

    for i, request in enumerate(requests):  # alone: no padding on either side
        with torch.no_grad():
            alone = plain_generate(model, tokenizer, [embeds[i]], stop_ids)
        assert alone == engine_tokens(engine, [request]), request.user_id


def test_the_merges_matter(run, exported, requests):
    """The same embeddings on the unmerged backbone answer differently: the test above can fail."""
    embedder = PromptEmbedder.from_export(exported)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    embeds = embedder.embed(requests)
    stop_ids = embedder.info["generation"]["stop_token_ids"]
    with torch.no_grad():
        merged = plain_generate(AutoModelForCausalLM.from_pretrained(exported).eval(), tokenizer, embeds, stop_ids)
        base = plain_generate(tiny_backbone(seed=0).model.eval(), tokenizer, embeds, stop_ids)
    assert merged != base


def test_table_rows_and_cold_start(exported, requests):
    embedder = PromptEmbedder.from_export(exported)
    assert embedder.table_row("nobody") is None
    assert torch.equal(embedder.table_row("ann"), requests[0].user_row)
    cold = GenerationRequest("nobody", "review: meh")
    mean = GenerationRequest("nobody", "review: meh", user_row=embedder.default_row())
    assert torch.equal(embedder.embed([cold])[0], embedder.embed([mean])[0])


def test_cli_export(run, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(out), "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert json.loads((out / PREFIX_INFO_NAME).read_text())["dtype"] == "bfloat16"
    bad = CliRunner().invoke(app, ["export", "--run", str(tmp_path / "missing"), "--out", str(out)])
    assert bad.exit_code == 2 and "not a tapper run" in bad.output
