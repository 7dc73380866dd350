"""Every peer on the tiny backbone and the built-in sample: trains a step, predicts, and its saved state
loads back to the same behaviour."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tapper.backbone import tiny_backbone
from tapper.baselines.common import make_baseline, run_baseline
from tapper.baselines.oppu import OppuBaseline, user_file_name
from tapper.baselines.pag import PagBaseline
from tapper.baselines.perpcs import PerPcsBaseline, PieceBank, PieceMixLinear
from tapper.baselines.pplug import PPlugBaseline
from tapper.baselines.rag import RagBaseline, RagConfig
from tapper.batching import answer_loss
from tapper.data.lamp_io import write_split
from tapper.data.records import LampSplit
from tapper.data.sample import load_sample

TASK = "LaMP_3"
# Short inputs keep the byte-level tiny model fast; two pairs per user and batch 2 give one step per user.
SMALL = {"show_progress": False, "max_history_pairs": 2, "batch_size": 2, "max_input_tokens": 192}


@pytest.fixture(scope="module")
def sample() -> dict[str, LampSplit]:
    return load_sample()


def subset(split: LampSplit, n: int) -> LampSplit:
    qs = split.questions[:n]
    return LampSplit(split.task, qs, {q.id: split.golds[q.id] for q in qs})


def losses(model, tokenizer, examples) -> float:
    with torch.no_grad():
        loss, _ = answer_loss(model, tokenizer, [e.prompt for e in examples], [e.answer for e in examples], 4)
    return float(loss)


def test_rag_writes_the_selected_earlier_records_into_the_prompt(tiny_backbone, sample, tmp_path):
    rag = RagBaseline(tiny_backbone, RagConfig.for_task(TASK, k=3, max_record_tokens=400, **SMALL))
    target = subset(sample["test"], 2)
    examples = rag.question_examples(target)
    for q, ex in zip(target.questions, examples, strict=True):
        assert len(ex.records) == 3
        profile_ids = {p.id for p in q.profile}
        assert {r.id for r in ex.records} <= profile_ids
        for record in ex.records:
            assert f'{record.get("score")} is the score for "{record.get("text")}"' in ex.prompt
        assert ex.prompt.index("Following the given patterns") > ex.prompt.index(ex.records[-1].get("text"))
    assert len(rag.generate(examples)) == 2
    result = run_baseline(rag, target, batch_size=2, show_progress=False)
    assert set(result.metrics) == {"mae", "rmse"} and result.per_user_params == 0
    rag.save(tmp_path)
    assert RagBaseline.load(tmp_path, tiny_backbone).config == rag.config
    with pytest.raises(ValueError, match="PAG"):
        PagBaseline.load(tmp_path, tiny_backbone)
    with pytest.raises(ValueError, match="unknown RagConfig option"):
        RagConfig.for_task(TASK, nonsense=1)


def test_pag_summaries_are_cached_per_user_and_history(tiny_backbone, sample, tmp_path):
    target = subset(sample["test"], 2)
    pag = make_baseline("pag", tiny_backbone, TASK, tmp_path, {**SMALL, "summary_tokens": 4})
    pag.fit(target)
    assert pag.generated == 2 and len(pag.cache) == 2
    pag.save(tmp_path)
    again = PagBaseline.load(tmp_path, tiny_backbone)
    again.fit(target)
    assert again.generated == 0 and again.by_user == pag.by_user
    grown = LampSplit(TASK, [target.questions[0]], None)
    grown.questions[0] = type(target.questions[0])(
        id="x", input=target.questions[0].input, profile=target.questions[0].profile[:-1],
        user_id=target.questions[0].user_id)
    again.fit(grown)
    assert again.generated == 1  # a different history is a different key
    pag.by_user = {q.user_id: "likes tests" for q in target.questions}
    example = pag.with_records(pag.builder.for_question(target.questions[0]))
    assert "User profile: likes tests\n" in example.prompt


def test_oppu_trains_one_file_per_user_and_switches_once_per_user(sample, tmp_path):
    target = subset(sample["test"], 2)
    oppu = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "epochs": 1.0})
    # r=8 on q (64->64) and v (64->32) in 2 layers
    assert oppu.per_user_params == 2 * (8 * (64 + 64) + 8 * (64 + 32))
    oppu.fit(target)
    users = [q.user_id for q in target.questions]
    assert oppu.trained_users() == sorted(users)
    state = load_file(str(tmp_path / "users" / user_file_name(users[0])))
    assert all(("lora_A" in k or "lora_B" in k) for k in state)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())  # trained away from B = 0

    examples = oppu.question_examples(target)
    mixed = [examples[0], examples[1], examples[0]]
    before = oppu.switches
    assert len(oppu.generate(mixed)) == 3
    assert oppu.switches - before == 2

    oppu.activate(users[0])
    pairs = oppu.history_pairs(users[0], target.questions[0].profile)
    trained_loss = losses(oppu.model, oppu.backbone.tokenizer, pairs)
    oppu.save(tmp_path)
    loaded = OppuBaseline.load(tmp_path, tiny_backbone())
    loaded.activate(users[0])
    assert losses(loaded.model, loaded.backbone.tokenizer, pairs) == pytest.approx(trained_loss, abs=1e-6)
    loaded.activate("nobody")  # no file: the slot is zeroed, i.e. the plain backbone
    plain = tiny_backbone()
    assert losses(loaded.model, loaded.backbone.tokenizer, pairs) == pytest.approx(
        losses(plain.model, plain.tokenizer, pairs), abs=1e-6)


def test_oppu_mixed_batch_answers_each_row_with_its_own_users_lora(sample, tmp_path):
    target = subset(sample["test"], 2)
    oppu = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "max_answer_tokens": 6})
    users = [q.user_id for q in target.questions]
    torch.manual_seed(1)
    for user_id in users:  # large random adapters, so that each user's answers are their own
        with torch.no_grad():
            for n, p in oppu.model.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.5)
        oppu.save_user(user_id)
    examples = oppu.question_examples(target)
    stranger = oppu.builder.for_query("nobody", target.questions[0].input, target.questions[0].profile)
    rows = [examples[0], examples[1], stranger, examples[1], examples[0]]
    one_user_at_a_time = oppu.generate(rows, max_new_tokens=6)
    assert one_user_at_a_time[0] != one_user_at_a_time[1] != one_user_at_a_time[2]  # the check can fail
    assert oppu.generate_mixed(rows, max_new_tokens=6) == one_user_at_a_time
    slots = set(oppu.model.peft_config)
    assert oppu.generate_mixed(rows[::-1], max_new_tokens=6) == one_user_at_a_time[::-1]
    assert set(oppu.model.peft_config) == slots  # slots are reused, not added per call


def test_oppu_fit_resumes_users_trained_from_the_same_start_and_retrains_the_rest(sample, tmp_path, monkeypatch):
    target = subset(sample["test"], 2)
    users = sorted(q.user_id for q in target.questions)
    oppu = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "epochs": 1.0})
    oppu.fit(target)
    first = {u: load_file(str(oppu.user_file(u))) for u in users}

    def count(baseline: OppuBaseline) -> list[str]:
        trained: list[str] = []
        real = baseline.train_user

        def counting(user_id, examples, max_steps=None, stamp=None):
            trained.append(user_id)
            return real(user_id, examples, max_steps, stamp)

        monkeypatch.setattr(baseline, "train_user", counting)
        return trained

    # a rerun after a kill: same settings, same pairs -> every finished user is kept, byte for byte
    again = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "epochs": 1.0})
    trained = count(again)
    again.fit(target)
    assert trained == []
    assert all(torch.equal(load_file(str(again.user_file(u)))[k], v) for u in users for k, v in first[u].items())
    # one user's file lost (the kill hit it): only that user is trained
    again.user_file(users[1]).unlink()
    again.fit(target)
    assert trained == [users[1]]
    # another recipe: every user is trained again, none reused
    other = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "epochs": 2.0})
    trained = count(other)
    other.fit(target)
    assert sorted(trained) == users


def test_piece_mix_is_the_weighted_sum_of_the_anchor_pieces():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5, bias=False)
    a, b = torch.randn(3, 2, 6), torch.randn(3, 5, 2)
    bank = PieceBank(n_layers=2, n_anchors=3)
    layer = PieceMixLinear(base, a, b, scale=0.5, layer=1, bank=bank)
    x = torch.randn(2, 4, 6)
    weights = torch.tensor([[[1.0, 0, 0], [0.0, 0.25, 0.75]], [[0.0, 1, 0], [1.0, 0.0, 0.0]]])
    bank.weights = weights
    out = layer(x)
    for row in range(2):
        w = weights[row, 1]
        delta = sum(w[n] * (b[n] @ a[n]) for n in range(3))
        assert torch.allclose(out[row], base(x[row]) + 0.5 * x[row] @ delta.T, atol=1e-5)
    bank.weights = None
    assert torch.allclose(layer(x), base(x))


def test_perpcs_assembles_users_from_anchor_pieces_and_stores_only_the_selection(sample, tmp_path):
    target = subset(sample["test"], 2)
    overrides = {**SMALL, "epochs": 1.0, "n_anchors": 2, "top_p": 1, "gate_epochs": 1.0}
    pcs = make_baseline("perpcs", tiny_backbone(), TASK, tmp_path, overrides)
    with pytest.raises(RuntimeError, match="no anchors"):
        pcs.fit(target)
    anchors = pcs.build_anchors(subset(sample["train"], 4))
    assert len(anchors) == 2 and not set(anchors) & {q.user_id for q in target.questions}
    assert pcs.build_anchors(subset(sample["train"], 4)) == anchors  # a complete anchor set is reused
    pcs.fit(target)
    assert pcs.per_user_params == 2 * 2  # gate logits: layers x anchors
    for q in target.questions:
        stored = load_file(str(tmp_path / "users" / user_file_name(q.user_id)))
        assert set(stored) == {"indices", "weights"}
        assert stored["indices"].shape == (2, 1) and stored["indices"].dtype == torch.uint8
        assert torch.allclose(stored["weights"].sum(-1), torch.ones(2))
        dense = pcs.user_weights(q.user_id)
        assert (dense > 0).sum(-1).tolist() == [1, 1]
    assert torch.allclose(pcs.user_weights("nobody"), torch.full((2, 2), 0.5))
    examples = pcs.question_examples(target)
    assert len(pcs.generate(examples)) == 2
    assert pcs.bank.weights is None  # per-call state is cleared
    pcs.save(tmp_path)

    loaded = PerPcsBaseline.load(tmp_path, tiny_backbone())
    assert loaded.anchors == sorted(anchors)
    for q in target.questions:
        assert torch.equal(loaded.user_weights(q.user_id), pcs.user_weights(q.user_id))


def test_pplug_trains_only_the_plug_and_round_trips(sample, tmp_path):
    target = subset(sample["test"], 2)
    backbone = tiny_backbone()
    frozen = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    plug = make_baseline("pplug", backbone, TASK, tmp_path, {**SMALL, "max_records": 4, "epochs": 0.5})
    start = {n: p.detach().clone() for n, p in plug.plug.named_parameters()}
    plug.fit(target)
    assert any(not torch.equal(start[n], p) for n, p in plug.plug.named_parameters())
    assert all(torch.equal(frozen[n], p) for n, p in backbone.model.named_parameters())

    examples = plug.question_examples(target)
    assert all(len(e.context.record_texts) == 4 for e in examples)
    token = plug.soft_token(examples)
    assert token.shape == (2, 1, backbone.hidden_size)
    assert len(plug.generate(examples)) == 2
    plug.save(tmp_path)
    loaded = PPlugBaseline.load(tmp_path, tiny_backbone())
    assert torch.allclose(loaded.soft_token(examples), token, atol=1e-6)
    fresh = loaded.builder.for_query("new", "a review", [])
    assert torch.isfinite(loaded.soft_token([fresh])).all()  # no history: a finite default token


def test_cli_runs_a_baseline_end_to_end(sample, tmp_path):
    import typer

    from tapper.cli.baselines import register

    app = typer.Typer()
    register(app)
    paths = write_split(tmp_path / "data", "test", subset(sample["test"], 2))
    questions = next(p for p in paths if p.name.endswith("questions.json"))
    outputs = next(p for p in paths if p.name.endswith("outputs.json"))
    runner = CliRunner()
    out = tmp_path / "rag"
    common = ["--task", TASK, "--questions", str(questions), "--model", "tiny"]
    result = runner.invoke(app, ["baseline", "rag", *common, "--outputs", str(outputs), "--out", str(out),
                                 "--set", "k=2", "--set", "max_input_tokens=192"])
    assert result.exit_code == 0, result.output
    assert "mae" in result.output and (out / "predictions.json").is_file() and (out / "scores.json").is_file()
    assert RagBaseline.load(out, tiny_backbone()).config.k == 2

    result = runner.invoke(app, ["baseline", "perpcs", *common, "--out", str(tmp_path / "pcs")])
    assert result.exit_code == 2 and "anchor" in result.output
    result = runner.invoke(app, ["baseline", "rag", *common, "--out", str(tmp_path / "x"), "--set", "kk=3"])
    assert result.exit_code == 2 and "kk" in result.output


def test_make_baseline_rejects_unknown_names(tiny_backbone, tmp_path: Path):
    with pytest.raises(KeyError, match="known: rag"):
        make_baseline("lora-soup", tiny_backbone, TASK, tmp_path)


def test_floors_for_each_task_answer_every_question_from_the_question_alone():
    from tapper.baselines.floors import floors
    from tapper.data.records import LampSplit, ProfileItem, Question

    article = "Generate a headline for the following article: " + " ".join(f"w{i}" for i in range(30))
    lamp4 = LampSplit("LaMP_4", [Question("q1", article, [], user_id="u")], {"q1": "gold"})
    (name, preds), = floors("LaMP_4", lamp4).items()
    assert "floor" in name and preds == {"q1": " ".join(f"w{i}" for i in range(12))}

    history = [ProfileItem("p1", {"text": "a", "category": "food"}, None, 0),
               ProfileItem("p2", {"text": "b", "category": "food"}, None, 1)]
    target = LampSplit("LaMP_2N", [Question("q", "x", history, user_id="u"), Question("r", "y", [], user_id="v")],
                       {"q": "sports", "r": "sports"})
    others = LampSplit("LaMP_2N", [], {"o1": "politics", "o2": "politics", "o3": "food"})
    got = floors("LaMP_2N", target, others)
    assert got["majority category, 'politics' (floor)"] == {"q": "politics", "r": "politics"}
    assert got["user's most frequent past category (floor)"] == {"q": "food", "r": "politics"}


def test_every_method_decodes_within_the_labels_when_constrained(sample, tmp_path):
    """--set constrain_answers=true reaches TAP-PER and each peer: no answer outside the label set."""
    from dataclasses import replace

    from tapper.data.tasks import get_task
    from tapper.prefix import TapperConfig, TapperModel
    from tapper.train import builder_for

    labels = get_task(TASK).labels
    target = subset(sample["test"], 3)
    for method in ("rag", "oppu", "perpcs", "pplug"):
        bb = tiny_backbone(seed=0)
        obj = make_baseline(method, bb, TASK, tmp_path / method, {**SMALL, "constrain_answers": True})
        if method == "perpcs":
            obj.build_anchors(subset(sample["train"], 2))
        obj.fit(target)
        out = obj.generate(obj.question_examples(target))
        assert all(text.strip() in labels for text in out), (method, out)
    model = TapperModel(tiny_backbone(seed=0), replace(TapperConfig(task=TASK, backbone="tiny", prefix_len=2),
                                                       constrain_answers=True), [q.user_id for q in target.questions])
    examples = [builder_for(model, model.config).for_question(q) for q in target.questions]
    assert all(text.strip() in labels for text in model.generate(examples))
