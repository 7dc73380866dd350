"""Every peer on the tiny backbone and the built-in sample: trains a step, predicts, and its saved state
loads back to the same behaviour."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tapper.backbone import tiny_backbone
from tapper.baselines.common import nonpersonal_backbone, run_baseline, truncate_record
from tapper.baselines.oppu import OppuBaseline, OppuConfig, user_file_name
from tapper.baselines.pag import PagBaseline
from tapper.baselines.perpcs import (
    PerPcsBaseline,
    PieceBank,
    PieceMixLinear,
    choose_pieces,
    piece_scores,
)
from tapper.baselines.pplug import PPlugBaseline, input_embedding_norm
from tapper.baselines.rag import RagBaseline, RagConfig
from tapper.baselines.registry import make_baseline
from tapper.batching import answer_loss
from tapper.data.lamp_io import write_split
from tapper.data.records import LampSplit
from tapper.data.sample import load_sample
from tapper.data.tasks import get_task
from tapper.train import resolve_configs
from tapper.train_loop import TrainingClock

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


def stage1_configs(**train):
    """Stage-1 settings for the tiny model: a couple of steps, no progress bars."""
    return resolve_configs(TASK, {"backbone": "tiny", "max_input_tokens": 192},
                           {"batch_size": 2, "stage1_epochs": 0.5, "show_progress": False, **train})


def test_rag_fine_tunes_like_stage1_on_prompts_carrying_their_records(sample, tmp_path, monkeypatch):
    """LaMP's fine-tuned RAG: stage 1's pairs and recipe, every training prompt with its selected records."""
    import tapper.train

    others = subset(sample["train"], 3)
    tcfg, cfg = stage1_configs(stage1_history_pairs=1)
    seen: list = []
    real = tapper.train.train_task_lora

    def spy(backbone, examples, *args, **kwargs):
        seen.extend(examples)
        return real(backbone, examples, *args, **kwargs)

    monkeypatch.setattr(tapper.train, "train_task_lora", spy)
    rag = RagBaseline(tiny_backbone(), RagConfig.for_task(TASK, k=2, max_record_tokens=400, **SMALL))
    before = {n: p.detach().clone() for n, p in rag.backbone.model.named_parameters()}
    rag.fine_tune(others, tmp_path / "rag-stage1", tcfg, cfg)
    assert rag.fine_tuned
    assert len(seen) == 2 * len(others.questions)  # each other user's question and latest history pair
    assert {e.example_id for e in seen} >= {q.id for q in others.questions}
    golds = {q.id: others.golds[q.id] for q in others.questions}
    assert all(e.answer == golds[e.example_id] for e in seen if e.example_id in golds)
    with_records = [e for e in seen if e.records]
    assert len(with_records) >= len(others.questions)  # the check can fail: records reach the training prompts
    tok = rag.backbone.tokenizer
    for e in with_records:
        assert "Following the given patterns" in e.prompt
        for record in e.records:
            assert get_task(TASK).record_prompt(truncate_record(record, tok, 400)) in e.prompt
    changed = [n for n, p in rag.backbone.model.named_parameters() if not torch.equal(before[n], p)]
    assert changed and all("proj" in n for n in changed)  # the LoRA was merged into the projections
    assert (tmp_path / "rag-stage1" / "task_adapter" / "tapper_stage1.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a kept adapter made from the same pairs must be reused")

    monkeypatch.setattr(tapper.train, "train", no_training)
    again = RagBaseline(tiny_backbone(), RagConfig.for_task(TASK, k=2, max_record_tokens=400, **SMALL))
    again.fine_tune(others, tmp_path / "rag-stage1", tcfg, cfg)
    assert all(torch.equal(p, dict(rag.backbone.model.named_parameters())[n])
               for n, p in again.backbone.model.named_parameters())


def _counting_summarizer(monkeypatch) -> list[str]:
    """Replaces PAG's generation by a summary naming how many records its prompt listed; returns the prompts."""
    import tapper.baselines.pag as pag_module

    asked: list[str] = []

    def summarizer(model, tokenizer, prompts, prefix, max_new_tokens, **kwargs):
        asked.extend(prompts)
        return [f"reads {sum(line.startswith('- ') for line in p.splitlines())} records" for p in prompts]

    monkeypatch.setattr(pag_module, "generate_batch", summarizer)
    return asked


def test_pag_summarizes_each_training_pairs_own_profile(sample, tmp_path, monkeypatch):
    # As each LaMP sample's summary reads that sample's profile: a stage-1 question's summary reads its whole
    # profile, a replayed history record's the records before it, never the record that is its own answer.
    asked = _counting_summarizer(monkeypatch)
    others = subset(sample["train"], 2)
    _, cfg = stage1_configs(stage1_history_pairs=2)
    pag = make_baseline("pag", tiny_backbone(), TASK, tmp_path, {**SMALL, "k": 1, "summary_records": 50})
    examples = pag.training_examples(others, cfg)
    assert len(examples) == 3 * len(others.questions) and len(asked) == pag.generated == len(examples)
    for q in others.questions:
        n = len(q.profile)
        assert n > 2
        expected = {q.id: n, f"{q.user_id}/{q.profile[-2].id}": n - 2, f"{q.user_id}/{q.profile[-1].id}": n - 1}
        mine = {e.example_id: e.prompt for e in examples if e.user_id == q.user_id}
        assert set(mine) == set(expected)
        for example_id, records in expected.items():
            assert mine[example_id].count(f"User profile: reads {records} records\n") == 1
        assert pag.cache_key(q.user_id, q.profile[:-2]) in pag.cache
    pag.training_examples(others, cfg)
    assert len(asked) == len(examples)  # the second time from the cache


def test_pag_gives_a_pair_without_earlier_records_no_summary(sample, tmp_path, monkeypatch):
    # Asked to describe an empty list of records, the summarizer invents a user: when PAG summarized each stage-1
    # user once, from the records before its earliest pair, most users of the built tasks had none and all got
    # one made-up summary, which PAG learned to ignore. A pair with no earlier record carries no profile line,
    # and nothing is generated for it.
    import dataclasses

    asked = _counting_summarizer(monkeypatch)
    others = subset(sample["train"], 1)
    q = others.questions[0]
    others.questions[0] = q = dataclasses.replace(q, profile=q.profile[-2:])  # both records replayed as pairs
    _, cfg = stage1_configs(stage1_history_pairs=2)
    pag = make_baseline("pag", tiny_backbone(), TASK, tmp_path, {**SMALL, "k": 1})
    examples = {e.example_id: e.prompt for e in pag.training_examples(others, cfg)}
    first, second = (f"{q.user_id}/{item.id}" for item in q.profile)
    assert set(examples) == {first, second, q.id}
    assert "User profile:" not in examples[first]
    assert "User profile: reads 1 records\n" in examples[second]
    assert "User profile: reads 2 records\n" in examples[q.id]
    assert len(asked) == 2


def test_rag_fine_tuned_on_targets_adds_their_history_pairs_with_their_earlier_records(sample, tmp_path,
                                                                                      monkeypatch):
    # The stage-1 users of the built tasks have short histories (none of LaMP-2's has a record before its
    # question): the targets' own history pairs are where RAG can learn to read records, as TAP-PER's stage 2
    # and the control learn from them. Never the targets' questions: their answers are what is scored.
    others, target = subset(sample["train"], 2), subset(sample["test"], 2)
    _, cfg = stage1_configs(stage1_history_pairs=1)
    plain = make_baseline("rag", tiny_backbone(), TASK, tmp_path, {**SMALL, "k": 2})
    stage1_ids = [e.example_id for e in plain.training_examples(others, cfg, target)]  # the flag off: unread
    rag = make_baseline("rag", tiny_backbone(), TASK, tmp_path, {**SMALL, "k": 2, "fine_tune_on_targets": True})
    with pytest.raises(ValueError, match="fine_tune_on_targets needs the target users"):
        rag.training_examples(others, cfg)
    examples = rag.training_examples(others, cfg, target)
    assert [e.example_id for e in examples[:len(stage1_ids)]] == stage1_ids
    added = examples[len(stage1_ids):]
    for q in target.questions:
        n = len(q.profile)
        assert n > 2
        mine = {e.example_id: e for e in added if e.user_id == q.user_id}
        assert set(mine) == {f"{q.user_id}/{item.id}" for item in q.profile[-2:]}  # max_history_pairs, latest
        for i in (n - 2, n - 1):
            e = mine[f"{q.user_id}/{q.profile[i].id}"]
            assert e.answer == get_task(TASK).history_pair(q.profile[i])[1]
            earlier = {item.id for item in q.profile[:i]}
            assert e.records and {r.id for r in e.records} <= earlier  # never the pair's own record or later
            for record in e.records:
                assert get_task(TASK).record_prompt(truncate_record(record, rag.backbone.tokenizer, 48)) in e.prompt
    assert not {q.id for q in target.questions} & {e.example_id for e in examples}
    # PAG: each target pair's summary reads the records before it, as a stage-1 pair's does
    asked = _counting_summarizer(monkeypatch)
    pag = make_baseline("pag", tiny_backbone(), TASK, tmp_path / "pag",
                        {**SMALL, "k": 1, "summary_records": 50, "fine_tune_on_targets": True})
    prompts = {e.example_id: e.prompt for e in pag.training_examples(others, cfg, target)}
    for q in target.questions:
        n = len(q.profile)
        assert f"User profile: reads {n - 1} records\n" in prompts[f"{q.user_id}/{q.profile[-1].id}"]
        assert f"User profile: reads {n - 2} records\n" in prompts[f"{q.user_id}/{q.profile[-2].id}"]
    assert len(asked) == len(prompts)


def test_pag_keeps_the_summaries_written_before_a_crash(sample, tmp_path, monkeypatch, caplog):
    import json

    import tapper.baselines.pag as pag_module

    def summarizer(model, tokenizer, prompts, prefix, max_new_tokens, **kwargs):
        calls.append(len(prompts))
        if len(calls) > pag_module.SUMMARY_BATCHES_PER_SAVE:  # killed inside the second chunk
            raise RuntimeError("killed")
        return ["likes tests" for _ in prompts]

    calls: list[int] = []
    monkeypatch.setattr(pag_module, "generate_batch", summarizer)
    q = sample["test"].questions[0]
    histories = [(q.user_id, q.profile[:i]) for i in range(1, pag_module.SUMMARY_BATCHES_PER_SAVE + 3)]
    pag = PagBaseline(tiny_backbone(), pag_module.PagConfig(task=TASK, summary_batch_size=1),
                      cache_path=tmp_path / "summaries.json")
    monkeypatch.setattr("tapper.log_lines.live_progress", lambda: False)  # a background run's log file
    with pytest.raises(RuntimeError, match="killed"), caplog.at_level("INFO", logger="tapper"):
        pag.summaries(histories)
    written = [r.getMessage().split(",")[0] for r in caplog.records if "written" in r.getMessage()]
    per_save = pag_module.SUMMARY_BATCHES_PER_SAVE
    assert written == [f"PAG summaries: {per_save} of {len(histories)} written"]  # the chunk saved before the crash
    kept = json.loads((tmp_path / "summaries.json").read_text())
    assert len(kept) == pag_module.SUMMARY_BATCHES_PER_SAVE  # the first chunk, on disk
    again = PagBaseline(tiny_backbone(), pag_module.PagConfig(task=TASK, summary_batch_size=1),
                        cache_path=tmp_path / "summaries.json")
    calls.clear()
    monkeypatch.setattr(pag_module, "SUMMARY_BATCHES_PER_SAVE", 100)
    assert again.summaries(histories) == ["likes tests"] * len(histories)
    assert sum(calls) == 2  # only what the crash left unwritten


def test_pag_reads_summaries_another_process_wrote_after_it_opened_the_cache(sample, tmp_path, monkeypatch):
    import tapper.baselines.pag as pag_module

    calls: list[int] = []
    monkeypatch.setattr(pag_module, "generate_batch", lambda model, tok, prompts, *a, **k: calls.append(len(prompts))
                        or ["likes tests"] * len(prompts))
    q = sample["test"].questions[0]
    histories = [(q.user_id, q.profile[:i]) for i in range(1, 4)]
    cache = tmp_path / "summaries.json"
    first, second = (PagBaseline(tiny_backbone(), pag_module.PagConfig(task=TASK, summary_batch_size=1),
                                 cache_path=cache) for _ in range(2))  # both opened while the cache is empty
    first.summaries(histories)
    assert sum(calls) == 3
    assert second.summaries(histories) == ["likes tests"] * 3
    assert sum(calls) == 3 and second.generated == 0  # the second read the first's, written none again


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


def test_pag_summary_keeps_what_the_summarizer_writes_after_a_newline(tiny_backbone, sample, tmp_path,
                                                                      monkeypatch):
    # A small summarizer often opens with "Their interests are:" and lists them on the next lines. Stopping at
    # the first newline (as task answers do) kept the opening alone: an empty summary for most LaMP-5R users.
    import tapper.baselines.pag as pag_module

    written = "This user's interests are:\n- college essays\n- minesweeper\n"

    def summarizer(model, tokenizer, prompts, prefix, max_new_tokens, stop_at_newline=True, **kwargs):
        return [written.split("\n")[0] if stop_at_newline else written for _ in prompts]

    monkeypatch.setattr(pag_module, "generate_batch", summarizer)
    target = subset(sample["test"], 1)
    pag = make_baseline("pag", tiny_backbone, TASK, tmp_path, {**SMALL, "summary_tokens": 16})
    pag.fit(target)
    summary = pag.by_user[target.questions[0].user_id]
    assert summary == "This user's interests are: - college essays - minesweeper"
    example = pag.with_records(pag.builder.for_question(target.questions[0]))
    assert f"User profile: {summary}\n" in example.prompt  # on one line of the prompt, whole


def test_oppu_follows_its_reference_lora_and_starts_from_the_nonpersonal_model(sample, tmp_path):
    from tapper.baselines.nonpersonal import nonpersonal_config
    from tapper.prefix import TapperConfig, TapperModel

    cfg = OppuConfig.for_task(TASK)
    assert (cfg.r, cfg.alpha, cfg.dropout, cfg.lr, cfg.epochs) == (8, 8, 0.05, 1e-4, 2.0)
    assert set(cfg.targets) == {"q_proj", "v_proj"}
    loop = cfg.loop(cfg.lr, cfg.epochs)
    assert (loop.warmup_ratio, loop.decay, loop.weight_decay, loop.max_grad_norm) == (0.1, "linear", 0.01, 0.3)

    # the same-budget non-personalized model: its LoRA (the "bridge" of a run without prefixes), merged
    target = subset(sample["test"], 2)
    model = TapperModel(tiny_backbone(), nonpersonal_config(TapperConfig(task=TASK, backbone="tiny")),
                        [q.user_id for q in target.questions])
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "nonpersonal")
    model.eval()  # no LoRA dropout in the comparison
    base = nonpersonal_backbone(tiny_backbone(), tmp_path / "nonpersonal")
    pairs = OppuBaseline(tiny_backbone(), cfg, tmp_path / "x").history_pairs(target.questions[0].user_id,
                                                                            target.questions[0].profile)
    plain = tiny_backbone()
    with_lora = losses(model.lm, model.tokenizer, pairs)
    assert losses(base.model, base.tokenizer, pairs) == pytest.approx(with_lora, abs=1e-5)
    assert with_lora != pytest.approx(losses(plain.model, plain.tokenizer, pairs), abs=1e-3)  # the check can fail

    oppu = make_baseline("oppu", base, TASK, tmp_path / "oppu", SMALL)
    peft_cfg = oppu.model.peft_config["default"]
    assert (peft_cfg.r, peft_cfg.lora_alpha) == (8, 8) and set(peft_cfg.target_modules) == {"q_proj", "v_proj"}
    oppu.activate("nobody")  # a user without a LoRA is answered by the non-personalized model itself
    assert losses(oppu.model, oppu.backbone.tokenizer, pairs) == pytest.approx(with_lora, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="non-personalized"):
        nonpersonal_backbone(tiny_backbone(), tmp_path / "nowhere")


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


def test_piece_mix_averages_the_chosen_pieces_a_and_b_with_each_rows_weights():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5, bias=False)
    a, b = torch.randn(3, 2, 6), torch.randn(3, 5, 2)
    bank = PieceBank(n_modules=2, n_anchors=3)
    layer = PieceMixLinear(base, a, b, scale=0.5, index=1, bank=bank)
    x = torch.randn(2, 4, 6)
    weights = torch.tensor([[[1.0, 0, 0], [0.0, 0.25, 0.75]], [[0.0, 1, 0], [1.0, 0.0, 0.0]]])
    bank.mode, bank.weights = "mix", weights
    out = layer(x)
    for row in range(2):
        w = weights[row, 1]
        mixed_b = sum(w[n] * b[n] for n in range(3))
        mixed_a = sum(w[n] * a[n] for n in range(3))
        assert torch.allclose(out[row], base(x[row]) + 0.5 * x[row] @ (mixed_b @ mixed_a).T, atol=1e-5)
    bank.mode = "off"
    assert torch.allclose(layer(x), base(x))


def test_pieces_are_scored_by_their_gates_on_the_answer_positions_only():
    torch.manual_seed(0)
    d = 16
    toward, away = torch.randn(d), torch.randn(d)
    x = torch.randn(2, 5, d) * 0.1
    select = torch.zeros(2, 5, dtype=torch.bool)
    select[:, 3:] = True
    x[:, 3:] += toward  # what the answer positions look like
    x[:, :3] += away * 10  # louder, but not read
    gates = torch.stack([away, toward, -toward])
    scores = piece_scores(x, select, gates)
    assert scores.argmax() == 1 and scores[2] < scores[1]
    assert torch.equal(choose_pieces(scores, 1, 1.0), torch.tensor([0.0, 1.0, 0.0]))
    two = choose_pieces(scores, 2, 0.5)
    assert two.sum() == pytest.approx(1.0) and (two > 0).sum() == 2 and two[1] > two[two.argsort()[-2]] - 1e-9
    everywhere = piece_scores(x, torch.ones_like(select), gates)
    assert everywhere.argmax() == 0  # the check can fail: reading every position picks another piece


def rewritten(split: LampSplit) -> dict[str, str]:
    """Replayed inputs for every history record of `split`, marked so that a prompt shows where it came from."""
    return {p.id: f"REWRITTEN {p.id}: {p.get('text')}" for q in split.questions for p in q.profile}


def test_perpcs_sharers_train_on_the_shared_history_inputs_and_targets_are_assembled_without_gradients(
        sample, tmp_path, monkeypatch):
    import tapper.baselines.perpcs as perpcs_module

    target, sharers = subset(sample["test"], 2), subset(sample["train"], 4)
    overrides = {**SMALL, "epochs": 1.0, "n_anchors": 2, "top_k": 1, "gate_epochs": 1.0}
    pcs = make_baseline("perpcs", tiny_backbone(), TASK, tmp_path, overrides, history_inputs=rewritten(target))
    with pytest.raises(RuntimeError, match="no anchors"):
        pcs.fit(target)
    lora_prompts: list[str] = []
    gate_prompts: list[str] = []
    real_user, real_train = OppuBaseline.train_user, perpcs_module.train

    def user_spy(self, user_id, examples, max_steps=None, stamp=None):
        lora_prompts.extend(e.prompt for e in examples)
        return real_user(self, user_id, examples, max_steps, stamp)

    def gate_spy(module, examples, *args, **kwargs):
        gate_prompts.extend(e.prompt for e in examples)
        return real_train(module, examples, *args, **kwargs)

    monkeypatch.setattr(OppuBaseline, "train_user", user_spy)
    monkeypatch.setattr(perpcs_module, "train", gate_spy)
    anchors = pcs.build_anchors(sharers, rewritten(sharers))
    assert len(anchors) == 2 and not set(anchors) & {q.user_id for q in target.questions}
    assert lora_prompts and gate_prompts  # both the pieces and the gates trained on the sharers' pairs ...
    assert all("REWRITTEN" in p for p in lora_prompts + gate_prompts)  # ... replayed from the shared inputs
    assert all(layer.gates.abs().sum() > 0 for layer in pcs.layers)  # each sharer's gates moved off zero

    def refuse(*args, **kwargs):
        raise AssertionError("assembling a target user takes no training step")

    monkeypatch.setattr(perpcs_module, "train", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    pcs.fit(target)
    assert all(p.grad is None for p in pcs.backbone.model.parameters())
    n_modules = 2 * 2  # q and v in 2 layers
    assert pcs.per_user_params == n_modules * 2
    for q in target.questions:
        stored = load_file(str(tmp_path / "users" / user_file_name(q.user_id)))
        assert set(stored) == {"weights"} and stored["weights"].shape == (n_modules, 2)
        assert torch.allclose(stored["weights"].sum(-1), torch.ones(n_modules))
        assert ((stored["weights"] > 0).sum(-1) == 1).all()  # top-1 of one batch: one piece per projection
    assert torch.allclose(pcs.user_weights("nobody"), torch.full((n_modules, 2), 0.5))
    examples = pcs.question_examples(target)
    assert all("REWRITTEN" not in e.prompt for e in examples)  # questions are asked as they are
    assert len(pcs.generate(examples)) == 2
    assert pcs.bank.mode == "off" and pcs.bank.weights is None  # per-call state is cleared
    pcs.save(tmp_path)

    # a rerun keeps every sharer whose LoRA and gates were made from the same start, recipe and pairs
    monkeypatch.setattr(OppuBaseline, "train_user", refuse)
    again = make_baseline("perpcs", tiny_backbone(), TASK, tmp_path, overrides, history_inputs=rewritten(target))
    assert again.build_anchors(sharers, rewritten(sharers)) == anchors
    for mine, theirs in zip(pcs.layers, again.layers, strict=True):
        assert torch.equal(mine.gates, theirs.gates)
    loaded = PerPcsBaseline.load(tmp_path, tiny_backbone())
    assert loaded.anchors == sorted(anchors)
    for q in target.questions:
        assert torch.equal(loaded.user_weights(q.user_id), pcs.user_weights(q.user_id))
    for mine, theirs in zip(pcs.layers, loaded.layers, strict=True):
        assert torch.equal(mine.gates, theirs.gates)


def test_pplug_prepends_its_instruction_embedding_and_a_personal_one_at_the_llms_embedding_norm(sample, tmp_path):
    target = subset(sample["test"], 2)
    backbone = tiny_backbone()
    frozen = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    plug = make_baseline("pplug", backbone, TASK, tmp_path, {**SMALL, "max_records": 4, "epochs": 0.5})
    norm = float(backbone.model.get_input_embeddings().weight.norm(dim=-1).mean())
    assert float(plug.plug.token_norm) == pytest.approx(norm)
    start = {n: p.detach().clone() for n, p in plug.plug.named_parameters()}
    plug.fit(target)
    assert not torch.equal(start["instruction"], plug.plug.instruction)  # the instruction embedding is trained
    assert any(not torch.equal(start[n], p) for n, p in plug.plug.named_parameters() if n.startswith("project."))
    assert all(torch.equal(frozen[n], p) for n, p in backbone.model.named_parameters())

    examples = plug.question_examples(target)
    assert all(len(e.context.record_texts) == 4 for e in examples)
    tokens = plug.soft_token(examples)
    assert tokens.shape == (2, 2, backbone.hidden_size)
    with torch.no_grad():
        instruction = plug.plug.project_instruction(plug.plug.instruction) * norm / 7.0
    assert torch.allclose(tokens[0, 0], instruction, atol=1e-5) and torch.allclose(tokens[1, 0], instruction, atol=1e-5)
    assert not torch.allclose(tokens[0, 1], tokens[1, 1])  # the personal token is each user's own
    fresh = plug.builder.for_query("new", "a review", [])
    alone = plug.soft_token([fresh])
    assert torch.isfinite(alone).all() and torch.allclose(alone[0, 0], instruction, atol=1e-5)
    assert len(plug.generate(examples)) == 2
    plug.save(tmp_path)
    loaded = PPlugBaseline.load(tmp_path, tiny_backbone())
    assert torch.allclose(loaded.soft_token(examples), tokens, atol=1e-6)

    # scaled to the LLM's own token size: the same plug on a backbone with 3x the embeddings gives 3x the tokens
    louder = tiny_backbone()
    with torch.no_grad():
        louder.model.get_input_embeddings().weight.mul_(3.0)
    assert input_embedding_norm(louder) == pytest.approx(3 * norm, rel=1e-5)
    first = PPlugBaseline(tiny_backbone(), plug.config, plug.encoder).soft_token(examples)
    second = PPlugBaseline(louder, plug.config, plug.encoder).soft_token(examples)
    assert torch.allclose(second, 3 * first, atol=1e-4)


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
    from tapper.baselines.floors import LAMP7_INSTRUCTION, floors
    from tapper.data.records import LampSplit, ProfileItem, Question

    article = "Generate a headline for the following article: " + " ".join(f"w{i}" for i in range(30))
    lamp4 = LampSplit("LaMP_4", [Question("q1", article, [], user_id="u")], {"q1": "gold"})
    lead, latest = floors("LaMP_4", lamp4).values()
    assert lead == latest == {"q1": " ".join(f"w{i}" for i in range(12))}  # no history: the lookup falls back
    headlines = [ProfileItem("h1", {"text": "t", "title": "older headline"}, 1.0, 0),
                 ProfileItem("h2", {"text": "t", "title": "newer headline"}, 2.0, 1)]
    lamp4.questions[0].profile = headlines
    assert floors("LaMP_4", lamp4)["user's most recent past headline (floor)"] == {"q1": "newer headline"}
    tweets = [ProfileItem("t1", {"text": "first tweet"}, None, 0), ProfileItem("t2", {"text": "last tweet"}, None, 1)]
    lamp7 = LampSplit("LaMP_7", [Question("a", LAMP7_INSTRUCTION + "hi there", tweets, user_id="u"),
                                 Question("b", LAMP7_INSTRUCTION + "bye", [], user_id="v")], {"a": "x", "b": "y"})
    got7 = floors("LaMP_7", lamp7)
    assert got7["copy the input (floor)"] == {"a": "hi there", "b": "bye"}
    assert got7["user's last past tweet (floor)"] == {"a": "last tweet", "b": "bye"}

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


def test_cli_nonpersonal_control_and_peers_set_up_as_the_comparison_does(sample, tmp_path):
    """`tapper baseline nonpersonal` trains the same-budget control; OPPU starts from a saved one
    (--nonpersonal-run); RAG given other users fine-tunes its own task LoRA with records in the prompts."""
    import json

    import typer

    from tapper.cli.baselines import register

    app = typer.Typer()
    register(app)
    target_paths = write_split(tmp_path / "data", "test", subset(sample["test"], 2))
    train_paths = write_split(tmp_path / "data", "train", subset(sample["train"], 2))
    questions = next(p for p in target_paths if p.name.endswith("questions.json"))
    outputs = next(p for p in target_paths if p.name.endswith("outputs.json"))
    train_q = next(p for p in train_paths if p.name.endswith("questions.json"))
    train_o = next(p for p in train_paths if p.name.endswith("outputs.json"))
    common = ["--task", TASK, "--questions", str(questions), "--outputs", str(outputs), "--model", "tiny"]
    fast = ["--set", "show_progress=false", "--set", "max_history_pairs=2", "--set", "batch_size=2"]
    runner = CliRunner()
    nonpersonal = tmp_path / "np"
    result = runner.invoke(app, ["baseline", "nonpersonal", *common, "--out", str(nonpersonal),
                                 "--stage1-questions", str(train_q), "--stage1-outputs", str(train_o),
                                 *fast, "--set", "stage1_epochs=0.5", "--set", "stage2_epochs=0.5"])
    assert result.exit_code == 0, result.output
    scores = json.loads((nonpersonal / "scores.json").read_text())
    assert scores["method"] == "non-personalized, same budget" and scores["per_user_params"] == 0
    assert (nonpersonal / "bridge" / "adapter_config.json").is_file()

    result = runner.invoke(app, ["baseline", "nonpersonal", *common, "--out", str(tmp_path / "x"),
                                 "--set", "k=2"])  # RAG's key: not a TAP-PER setting
    assert result.exit_code == 2 and "k" in result.output
    result = runner.invoke(app, ["baseline", "rag", *common, "--out", str(tmp_path / "y"),
                                 "--from-task-model"])
    assert result.exit_code == 2 and "oppu only" in result.output

    oppu = tmp_path / "oppu"
    result = runner.invoke(app, ["baseline", "oppu", *common, "--out", str(oppu), "--set", "show_progress=false",
                                 "--set", "max_history_pairs=2", "--nonpersonal-run", str(nonpersonal)])
    assert result.exit_code == 0, result.output
    assert json.loads((oppu / "scores.json").read_text())["method"] == "OPPU"

    rag = tmp_path / "rag"
    result = runner.invoke(app, ["baseline", "rag", *common, "--out", str(rag), "--stage1-questions", str(train_q),
                                 "--stage1-outputs", str(train_o), "--set", "show_progress=false",
                                 "--set", "k=1"])
    assert result.exit_code == 0, result.output
    assert "fine-tuned with records" in json.loads((rag / "scores.json").read_text())["method"]
    assert (rag / "stage1-rag" / "task_adapter").is_dir()
    # the option that adds the targets' own history pairs (2 each) to the fine-tuning pairs reaches the CLI
    both = tmp_path / "rag-targets"
    result = runner.invoke(app, ["baseline", "rag", *common, "--out", str(both), "--stage1-questions", str(train_q),
                                 "--stage1-outputs", str(train_o), *fast, "--set", "k=1",
                                 "--set", "fine_tune_on_targets=true"])
    assert result.exit_code == 0, result.output
    pairs = [json.loads((d / "stage1-rag" / "task_adapter" / "tapper_stage1.json").read_text())["examples"]
             for d in (rag, both)]
    assert pairs[1] == pairs[0] + 2 * 2


def test_a_resumed_oppu_fit_counts_the_training_time_of_the_users_it_keeps(sample, tmp_path):
    target = subset(sample["test"], 2)
    users = sorted(q.user_id for q in target.questions)
    first = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "epochs": 1.0})
    with TrainingClock() as clock:
        first.fit(target)
    spent = {u: first.fit_seconds(u) for u in users}
    assert all(s > 0 for s in spent.values()) and sum(spent.values()) <= clock.seconds
    # a rerun that keeps every user costs no new training, yet reports what the kept adapters took
    again = make_baseline("oppu", tiny_backbone(), TASK, tmp_path, {**SMALL, "epochs": 1.0})
    with TrainingClock() as rerun:
        again.fit(target)
    assert rerun.seconds >= sum(spent.values())


def test_pag_warns_when_its_summarizer_is_a_base_model(caplog):
    import tapper.baselines.pag as pag_module

    base = tiny_backbone()
    base.tokenizer.chat_template = None  # as Gemma 3 270M's: it continues the record list it is shown
    with caplog.at_level("WARNING", logger="tapper"):
        PagBaseline(tiny_backbone(), pag_module.PagConfig(task=TASK), summarizer=base)
    assert any("no chat template" in r.getMessage() and "--pag-summarizer" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="tapper"):
        PagBaseline(tiny_backbone(), pag_module.PagConfig(task=TASK))
    assert not caplog.records
