"""TAP-PER on the tiny backbone: shapes, personalization, time decay, masking, batching, persistence."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from tapper.backbone import tiny_backbone
from tapper.batching import IGNORE, encode_train, with_prefix
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import get_task
from tapper.engine import GenerationRequest, TapperEngine
from tapper.examples import ExampleBuilder
from tapper.prefix import QueryPrefix, TapperConfig, TapperModel, UserStateTable
from tapper.prefix.user_state import dequantize_rows_int8, quantize_rows_int8
from tapper.train import TrainConfig, fit_user_row, history_examples, onboard_users, train_prefixes

TASK = get_task("LaMP_3")
WORDS = ["soft", "greasy", "fresh", "sticky", "smooth", "harsh", "light", "heavy"]


def make_history(user: int, n: int = 6, dated: bool = True) -> list[ProfileItem]:
    items = []
    for j in range(n):
        w = WORDS[(user + j) % len(WORDS)]
        items.append(ProfileItem(
            id=f"u{user}_{j}",
            fields={"text": f"this cream feels {w} on skin", "score": str(1 + (user + j) % 5)},
            day=float(100 + 10 * j) if dated else None,
            position=j,
        ))
    return items


def make_split(n_users: int = 4) -> LampSplit:
    qs = [
        Question(id=f"q{u}", input=f"{TASK.history_input(make_history(u)[0])}", profile=make_history(u),
                 user_id=f"user{u}")
        for u in range(n_users)
    ]
    return LampSplit(task="LaMP_3", questions=qs, golds={q.id: "3" for q in qs})


def spiky_backbone():
    """The tiny backbone with larger random weights: its greedy outputs vary with the input (at the default
    init scale every prompt decodes to the same token, and equality checks on generations would be empty)."""
    bb = tiny_backbone(seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return bb


@pytest.fixture()
def backbone():
    return spiky_backbone()


def make_model(backbone, **overrides) -> TapperModel:
    torch.manual_seed(0)
    cfg = TapperConfig(task="LaMP_3", backbone="tiny", prefix_len=4, top_k=3, **overrides)
    model = TapperModel(backbone, cfg, [f"user{u}" for u in range(4)])
    with torch.no_grad():  # spread the rows so that different users really differ
        model.user_state.weight.normal_(0, 1.0)
    return model.eval()


def builder(model: TapperModel) -> ExampleBuilder:
    from tapper.train import builder_for

    return builder_for(model, model.config)


def test_prefix_shapes(backbone):
    model = make_model(backbone)
    b = builder(model)
    exs = [b.for_question(q) for q in make_split().questions]
    prefix, weights = model.build_prefix(exs)
    assert prefix.shape == (4, 4, backbone.hidden_size)
    assert weights.shape == (4, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(4), atol=1e-5)
    assert model.user_state.row_size == 4 * backbone.hidden_size


def test_user_rows_change_outputs(backbone):
    model = make_model(backbone, use_query_prefix=False)
    ex = builder(model).for_question(make_split().questions[0])
    a = ex.__class__(**{**ex.__dict__, "user_id": "user0"})
    c = ex.__class__(**{**ex.__dict__, "user_id": "user1"})
    pa, _ = model.build_prefix([a])
    pc, _ = model.build_prefix([c])
    assert not torch.allclose(pa, pc)
    la, _ = model.loss([a.__class__(**{**a.__dict__, "answer": "4"})])
    lc, _ = model.loss([c.__class__(**{**c.__dict__, "answer": "4"})])
    assert abs(float(la.detach()) - float(lc.detach())) > 1e-4


def test_time_decay_moves_attention_as_dates_change():
    torch.manual_seed(0)
    qp = QueryPrefix(hidden=8, prefix_len=2)
    with torch.no_grad():
        qp.lambda_time.fill_(1.0)
    zq, zr = torch.randn(1, 8), torch.randn(1, 3, 8)
    mask = torch.ones(1, 3, dtype=torch.bool)
    steps = torch.tensor([[1.0, 2.0, 3.0]])
    w_recent = qp.attention(zq, zr, mask, torch.tensor([[1.0, 1.0, 1.0]]), steps)
    w_old0 = qp.attention(zq, zr, mask, torch.tensor([[400.0, 1.0, 1.0]]), steps)
    assert w_old0[0, 0] < w_recent[0, 0]  # record 0 got older -> less weight
    # an undated record gets no time term at all (not a silent zero distance for everyone)
    w_nan = qp.attention(zq, zr, mask, torch.tensor([[math.nan, 1.0, 1.0]]), steps)
    w_zero = qp.attention(zq, zr, mask, torch.tensor([[0.0, 1.0, 1.0]]), steps)
    assert torch.allclose(w_nan, w_zero)
    qp_off = QueryPrefix(hidden=8, prefix_len=2, use_time_decay=False)
    qp_off.load_state_dict(qp.state_dict())
    assert torch.allclose(
        qp_off.attention(zq, zr, mask, torch.tensor([[400.0, 1.0, 1.0]]), steps),
        qp_off.attention(zq, zr, mask, torch.tensor([[1.0, 1.0, 1.0]]), steps),
    )


def test_missing_dates_are_counted(backbone):
    model = make_model(backbone)
    b = builder(model)
    ex = b.for_query("user0", "feels soft", make_history(0, dated=False))
    assert ex.context.undated == len(ex.context.record_ids) > 0
    assert all(math.isnan(d) for d in ex.context.days_back)
    assert b.undated.undated == len(ex.context.record_ids)


def test_selection_is_strictly_before_and_shared_by_train_and_inference(backbone):
    model = make_model(backbone)
    b = builder(model)
    hist = make_history(0, n=6)
    train_exs = b.from_history("user0", hist)
    for i, ex in enumerate(train_exs):
        allowed = {item.id for item in hist[:i]}
        assert set(ex.context.record_ids) <= allowed
    # the same rule at inference: a query with end=len(history) may use every record
    q = b.for_query("user0", train_exs[-1].query, hist, end=5)
    assert q.context.record_ids == train_exs[-1].context.record_ids


def test_answer_only_loss_masks_prompt_and_prefix(backbone):
    tok = backbone.tokenizer
    batch = encode_train(tok, ["prompt one", "p2"], ["4", "a longer answer"], max_answer_tokens=16)
    for r, answer in enumerate(["4", "a longer answer"]):
        kept = batch.labels[r][batch.labels[r] != IGNORE].tolist()
        assert kept == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    emb = torch.zeros(2, batch.input_ids.shape[1], 8)
    prefix = torch.ones(2, 3, 8)
    _, mask, labels = with_prefix(emb, batch.attention_mask, prefix, batch.labels)
    assert (labels[:, :3] == IGNORE).all() and (mask[:, :3] == 1).all()
    # the loss ignores prompt tokens: changing the prompt's label-free part keeps the count of scored tokens
    model = make_model(backbone)
    ex = builder(model).for_question(make_split().questions[0], answer="5")
    loss, n = model.loss([ex])
    prompt_len = len(tok(ex.prompt, add_special_tokens=False)["input_ids"])
    assert n == 4 + prompt_len + len(tok("5", add_special_tokens=False)["input_ids"]) + 1  # prefix+prompt+answer+eos
    assert torch.isfinite(loss)


def test_answer_loss_equals_full_lm_loss_on_answer_tokens(backbone):
    """The head-on-answers-only shortcut must give exactly the loss HF computes over all positions."""
    model = make_model(backbone)
    b = builder(model)
    exs = [b.for_question(q, answer=a) for q, a in zip(make_split().questions, ["1", "22", "3", "a b c"], strict=True)]
    exs[1] = b.for_query("user1", "short", make_history(1, n=2), answer="4 stars")
    with torch.no_grad():
        fast, _ = model.loss(exs)
        prefix, _ = model.build_prefix(exs)
        batch = encode_train(backbone.tokenizer, [e.prompt for e in exs], [e.answer for e in exs], 48)
        embeds = model.hf_model.get_input_embeddings()(batch.input_ids)
        embeds, mask, labels = with_prefix(embeds, batch.attention_mask, prefix, batch.labels)
        full = model.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    assert torch.allclose(fast, full, atol=1e-5)


def test_mixed_user_batch_matches_each_user_alone(backbone):
    model = make_model(backbone)
    b = builder(model)
    exs = [b.for_question(q) for q in make_split().questions]
    exs[2] = b.for_query("user2", "short", make_history(2, n=2))  # different prompt length -> padding
    together = model.generate(exs, max_new_tokens=6, stop_at_newline=False)
    alone = [model.generate([e], max_new_tokens=6, stop_at_newline=False)[0] for e in exs]
    assert together == alone
    assert len(set(together)) > 1  # users really differ


@pytest.mark.parametrize("anchor_text", [None, "the user writes"])
def test_save_load_round_trip_is_exact(backbone, tmp_path, anchor_text):
    model = make_model(backbone, anchor_text=anchor_text)
    with torch.no_grad():
        for p in model.shared_parameters():
            p.add_(torch.randn_like(p) * 0.01)  # make the bridge non-trivial (LoRA B starts at zero)
    model.save_pretrained(tmp_path / "run")
    loaded = TapperModel.from_pretrained(tmp_path / "run", backbone=spiky_backbone()).eval()
    exs = [builder(model).for_question(q) for q in make_split().questions]
    p1, _ = model.build_prefix(exs)
    p2, _ = loaded.build_prefix(exs)
    assert torch.equal(p1, p2)
    assert loaded.user_state.user_ids == model.user_state.user_ids
    assert model.generate(exs, max_new_tokens=5, stop_at_newline=False) == loaded.generate(
        exs, max_new_tokens=5, stop_at_newline=False
    )
    with torch.no_grad():
        l1, _ = model.loss([e.__class__(**{**e.__dict__, "answer": "2"}) for e in exs])
        l2, _ = loaded.loss([e.__class__(**{**e.__dict__, "answer": "2"}) for e in exs])
    assert torch.equal(l1, l2)


def test_user_table_grows_without_touching_rows_and_int8_is_close(tmp_path):
    table = UserStateTable(16, ["a", "b"], seed=1)
    before = table.weight.detach().clone()
    table.add_users(["c", "a"])
    assert table.user_ids == ["a", "b", "c"]
    assert torch.equal(table.weight[:2].detach(), before)
    q, s = quantize_rows_int8(table.weight.detach())
    err = (dequantize_rows_int8(q, s) - table.weight.detach()).abs().max()
    assert err <= s.max() / 2 + 1e-7
    table.save_pretrained(tmp_path / "t8", int8=True)
    t8 = UserStateTable.from_pretrained(tmp_path / "t8")
    assert torch.allclose(t8.weight, table.weight, atol=float(s.max()))
    # an unknown user reads the mean row (cold start)
    assert torch.allclose(table.rows(["zzz"])[0], table.weight.detach().mean(0))


def test_user_row_gradient_is_bitwise_reproducible_with_two_threads():
    """A stage-2 batch often holds one user many times. Plain indexing (weight[idx]) accumulated such a
    row's gradient in a thread-dependent order on CPU; Adam then turned the last-bit differences of
    near-zero coordinates into +-lr steps, and two runs of the demo ended two users apart."""
    table = UserStateTable(4608, ["a", "b"], seed=1)  # a real row's size: large enough to go parallel
    upstream = torch.randn(8, 4608, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = set()
        for _ in range(20):
            table.weight.grad = None
            table.rows(["a"] * 8).backward(upstream)
            grads.add(table.weight.grad.numpy().tobytes())
    finally:
        torch.set_num_threads(threads)
    assert len(grads) == 1


@pytest.mark.parametrize("anchor_text", [None, "the user writes"])
def test_onboarding_changes_only_that_users_row(backbone, anchor_text):
    model = make_model(backbone, anchor_text=anchor_text)
    shared_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    b = builder(model)
    exs = b.from_history("newbie", make_history(7))
    cfg = TrainConfig(onboard_steps=5, onboard_lr=0.1, batch_size=4, show_progress=False)
    row = fit_user_row(model, exs, cfg)
    assert row.shape == (model.row_size,)
    assert not torch.allclose(row, model.user_state.mean_row())
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), shared_before[n]), n
    model.user_state.set_row("newbie", row)
    assert torch.equal(model.user_state.weight[:4].detach(), shared_before["user_state.weight"])


def test_onboard_users_budget_and_start(backbone):
    """steps=0 keeps the start row; a given start row is where the fit begins (bench/quality.py fits every
    budget from the same row); without one, a known user's fit starts from their current row."""
    model = make_model(backbone)
    b = builder(model)
    cfg = TrainConfig(onboard_steps=5, onboard_lr=0.1, batch_size=4, show_progress=False)
    start = torch.full((model.row_size,), 0.5)
    asked = [Question("q-newbie", "an input", make_history(7), "newbie")]
    assert torch.equal(onboard_users(model, asked, cfg, b, steps=0, start=start)["newbie"], start)
    assert torch.equal(model.user_state.rows(["newbie"])[0].detach(), start)
    other = [Question("q-other", "an input", make_history(7), "other")]
    one = onboard_users(model, other, cfg, b, steps=1, start=start)["other"]
    assert not torch.equal(one, start)
    # one Adam step moves each coordinate by about the learning rate, from `start`
    assert (one - start).abs().max() <= cfg.onboard_lr * 1.01
    again = onboard_users(model, other, cfg, b, steps=1)["other"]  # from its own row now
    assert (again - one).abs().max() <= cfg.onboard_lr * 1.01
    assert not torch.allclose(again - start, one - start)


def test_onboard_users_start_new_users_from_the_mean_before_the_call(backbone):
    """Every new user starts from the table's mean row as it was, whoever was onboarded before them, and the
    rows land in one append (ids in order, earlier rows untouched)."""
    model = make_model(backbone)
    b = builder(model)
    cfg = TrainConfig(onboard_steps=0, show_progress=False)
    before = model.user_state.weight.detach().clone()
    mean = model.user_state.mean_row().clone()
    asked = [Question(f"q{i}", "an input", make_history(3), f"new-{i}") for i in range(3)]
    rows = onboard_users(model, asked, cfg, b)
    assert all(torch.equal(r, mean) for r in rows.values())
    assert model.user_state.user_ids[-3:] == ["new-0", "new-1", "new-2"]
    assert torch.equal(model.user_state.weight[: len(before)].detach(), before)
    with pytest.raises(ValueError, match="more than once"):
        model.user_state.set_rows(["a", "a"], torch.zeros(2, model.row_size))


def kill_after(model: TapperModel, steps: int) -> None:
    """Make the model's loss raise like a kill once `steps` batches have been computed."""
    real, calls = model.loss, {"n": 0}

    def crashing(batch, user_rows=None):
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt("simulated kill")
        return real(batch, user_rows)

    model.loss = crashing


def test_killed_training_resumes_from_last_checkpoint(backbone, tmp_path):
    split = make_split()
    cfg = TrainConfig(stage2_epochs=3, batch_size=4, checkpoint_every=2, show_progress=False, max_history_pairs=4)

    def run(run_dir, crash_at=None):
        model = make_model(spiky_backbone())
        exs = history_examples(builder(model), split, cfg.max_history_pairs)
        if crash_at is not None:
            kill_after(model, crash_at)
        train_prefixes(model, exs, cfg, run_dir)
        return model

    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crash", crash_at=3)
    assert (tmp_path / "crash" / "checkpoints" / "stage2" / "trainer_state.json").exists()
    resumed = run(tmp_path / "crash")
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n


def test_a_checkpoint_from_another_run_is_not_resumed(tmp_path):
    """A killed run, then a new stage 1 (other frozen weights) in the same directory: stage 2 starts afresh."""
    split = make_split()
    cfg = TrainConfig(stage2_epochs=3, batch_size=4, checkpoint_every=2, show_progress=False, max_history_pairs=4)

    def run(run_dir, backbone_seed, crash_at=None):
        model = make_model(spiky_backbone())
        with torch.no_grad():  # stands in for another task adapter merged into the backbone
            model.hf_model.lm_head.weight.add_(0.01 * backbone_seed)
        exs = history_examples(builder(model), split, cfg.max_history_pairs)
        if crash_at is not None:
            kill_after(model, crash_at)
        return model, train_prefixes(model, exs, cfg, run_dir)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", backbone_seed=1, crash_at=3)
    assert (tmp_path / "run" / "checkpoints" / "stage2" / "trainer_state.json").exists()
    fresh, _ = run(tmp_path / "fresh", backbone_seed=0)
    again, result = run(tmp_path / "run", backbone_seed=0)
    assert result.resumed_from == 0
    for (n, p), (_, q) in zip(fresh.named_parameters(), again.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n


def test_engine_paths_cold_start_and_no_history(backbone, tmp_path):
    model = make_model(backbone)
    with torch.no_grad():  # a non-zero bridge, so that the engine's merged copy has something to merge
        for p in model.shared_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "run")
    engine = TapperEngine(TapperModel.from_pretrained(tmp_path / "run", backbone=spiky_backbone()))
    hist = make_history(1)
    reqs = [
        GenerationRequest("user0", "feels soft", hist, user_row=model.user_state.rows(["user0"])[0]),
        GenerationRequest("stranger", "feels soft", hist),
        GenerationRequest("nobody", "feels soft", []),
    ]
    out = engine.generate(reqs, max_new_tokens=3)
    assert [r.path for r in out] == ["personalized", "cold_start", "non_personalized"]
    assert out[0].record_ids and out[0].record_ids == out[1].record_ids and out[2].record_ids == []
    # cold start == explicitly passing the mean row
    explicit = engine.generate([GenerationRequest("x", "feels soft", hist, user_row=engine.default_row())], 3)
    assert explicit[0].raw == out[1].raw
    # the engine merged the bridge into the weights; its text must be what the unmerged model says
    ex = builder(model).for_query("user0", "feels soft", hist)
    unmerged = model.generate([ex], user_rows=reqs[0].user_row[None], max_new_tokens=3)
    assert out[0].raw and out[0].raw == unmerged[0]


def test_int8_scoring_restores_the_float_table(backbone):
    from tapper.experiment import score_with_int8_user_state

    model = make_model(backbone)
    before = model.user_state.weight.detach().clone()
    res = score_with_int8_user_state("int8", model, make_split())
    assert set(res.predictions) == {f"q{u}" for u in range(4)}
    assert "mae" in res.metrics
    assert torch.equal(model.user_state.weight.detach(), before)


def test_stage1_depends_on_the_seed_not_on_the_rng_state_it_starts_from(tmp_path):
    from tapper.experiment import stage1

    cfg = TrainConfig(stage1_epochs=0.5, batch_size=2, show_progress=False, checkpoint_every=0)
    tcfg = TapperConfig(task="LaMP_3", backbone="tiny")
    adapters = []
    for i, noise_seed in enumerate((123, 456)):
        torch.manual_seed(noise_seed)  # whatever ran before must not leak into the result
        tuned = stage1(tiny_backbone(seed=0), make_split(), tcfg, cfg, tmp_path / f"run{i}")
        adapters.append([p.detach().clone() for p in tuned.model.parameters()])
    for a, b in zip(*adapters, strict=True):
        assert torch.equal(a, b)


def test_without_user_state_a_row_without_records_is_never_all_zeros(backbone):
    # An all-zero prefix row gives NaN gradients in SmolLM2; without P_u such a row reads P_q's learned
    # "no history" vector (the projection's bias), and a row with records is unchanged.
    model = make_model(backbone, use_user_state=False)
    b = builder(model)
    hist = make_history(0)
    no_records = b.for_query("user0", "feels soft", hist, end=0)
    with_records = b.for_query("user0", "feels soft", hist)
    prefix, _ = model.build_prefix([no_records, with_records])
    assert prefix[0].abs().sum() > 0
    assert torch.allclose(prefix[0], model.query_prefix.proj.bias.view_as(prefix[0]))
    alone, _ = model.build_prefix([with_records])
    assert torch.allclose(prefix[1], alone[0])


def test_anchor_starts_as_token_embeddings_and_is_trained_in_stage2(backbone, tmp_path):
    model = make_model(backbone, anchor_text="hi")
    ids = backbone.tokenizer("hi", add_special_tokens=False)["input_ids"]
    emb = backbone.model.get_input_embeddings().weight
    expected = emb[[ids[i % len(ids)] for i in range(model.config.prefix_len)]]
    assert torch.equal(model.prefix_anchor.detach(), expected.detach())
    # a user the table does not know, with no history: the prefix is the anchor plus the mean row
    ex = builder(model).for_question(Question("q", "Rate: good", [], user_id="stranger"))
    prefix, _ = model.build_prefix([ex])
    mean = model.user_state.mean_row().view(model.config.prefix_len, -1)
    torch.testing.assert_close(prefix[0], expected + mean)
    before = model.prefix_anchor.detach().clone()
    cfg = TrainConfig(stage2_epochs=1, batch_size=4, show_progress=False)
    train_prefixes(model.train(), history_examples(builder(model), make_split(), 4), cfg, tmp_path)
    assert not torch.equal(model.prefix_anchor.detach(), before)


def test_a_saved_run_and_its_config_must_agree_on_the_anchor(backbone, tmp_path):
    import json

    make_model(backbone, anchor_text="hi").save_pretrained(tmp_path / "run")
    path = tmp_path / "run" / "tapper_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "anchor_text": None}))
    with pytest.raises(ValueError, match="prefix_anchor"):
        TapperModel.from_pretrained(tmp_path / "run", backbone=spiky_backbone())


def test_stage1_reuses_its_adapter_only_for_the_same_examples_and_settings(tmp_path):
    from tapper.experiment import stage1
    from tapper.train import STAGE1_STAMP

    cfg = TrainConfig(stage1_epochs=0.5, batch_size=2, show_progress=False, checkpoint_every=0)
    tcfg = TapperConfig(task="LaMP_3", backbone="tiny")
    stamp = tmp_path / "run" / "task_adapter" / STAGE1_STAMP

    def weights(tuned) -> list[torch.Tensor]:
        return [p.detach().clone() for p in tuned.model.parameters()]

    first = weights(stage1(tiny_backbone(seed=0), make_split(), tcfg, cfg, tmp_path / "run"))
    made = stamp.read_text()
    again = weights(stage1(tiny_backbone(seed=0), make_split(), tcfg, cfg, tmp_path / "run"))
    assert stamp.read_text() == made and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # another learning rate (or other pairs) must not silently pick up the adapter trained before
    other = weights(stage1(tiny_backbone(seed=0), make_split(), tcfg, replace(cfg, stage1_lr=1e-2), tmp_path / "run"))
    assert stamp.read_text() != made
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    fewer = make_split(3)
    stage1(tiny_backbone(seed=0), fewer, tcfg, cfg, tmp_path / "run")
    assert json.loads(stamp.read_text())["examples"] < json.loads(made)["examples"]
