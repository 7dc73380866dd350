"""`tapper compare` (tapper.compare): every method on the built-in sample with the tiny backbone, the result
files bench/quality.py writes, kept results reused by a rerun and re-run when a setting they read changes, and
the onboarding grid of learning rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tapper.data.sample as sample_module
from tapper.baselines import registry
from tapper.cli import app
from tapper.compare import PEER_VARIANTS, onboard_key, onboarded_name, parse_methods
from tapper.compare.runner import method_settings

SAMPLE = Path(sample_module.__file__).parent / "sample"
FAST = ["--set", "stage2_epochs=0.25", "--set", "stage1_epochs=0.25", "--set", "batch_size=4",
        "--set", "max_history_pairs=2", "--set", "show_progress=false"]
METHODS = "floors,zero-shot,nonpersonal,tapper,onboard"


def compare(tmp_path: Path, *extra: str):
    return CliRunner().invoke(app, [
        "compare", "--sample", "--model", "tiny", "--methods", METHODS, "--max-users", "6", "--onboard-users", "2",
        "--onboard-steps", "1", "--onboard-lrs", "1e-3,1e-2", "--out", str(tmp_path / "out"),
        "--runs", str(tmp_path / "runs"), *FAST, *extra])


def test_compare_on_the_sample_writes_the_bench_files_and_a_rerun_reuses_kept_results(tmp_path: Path):
    first = compare(tmp_path)
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"
    for suffix in ("json", "md", "png"):
        assert (out / f"quality_LaMP_3.{suffix}").is_file(), suffix
    data = json.loads((out / "quality_LaMP_3.json").read_text())
    assert data["task"] == "LaMP_3" and data["target_users"] == 6 and data["stage1_users"] == 32
    assert data["kept_results_reused"] == []
    by_name = {r["method"]: r for r in data["results"]}
    for name in ("user's mean past rating (floor)", "always 5 (floor)", "zero-shot backbone",
                 "non-personalized, same budget", "TAP-PER", "TAP-PER (int8 user table)"):
        assert name in by_name, sorted(by_name)
        row = by_name[name]
        assert set(row["metrics"]) == {"mae", "rmse"} and len(row["examples"]) == 5
        assert row["ci95"]["mae"][0] <= row["metrics"]["mae"] <= row["ci95"]["mae"][1]
    assert by_name["TAP-PER"]["prompts"] and "[record for P_q]" in next(iter(by_name["TAP-PER"]["prompts"].values()))
    # what each method saw survives into the results: every kept prompt holds the start of its own review
    # (the tiny model's byte tokenizer leaves 25 tokens of content within LaMP-3's budget)
    from tapper.data.sample import load_sample

    reviews = {q.id: q.input.split("review: ", 1)[1] for q in load_sample()["test"].questions}
    for name in ("zero-shot backbone", "non-personalized, same budget", "TAP-PER"):
        kept = by_name[name]["prompts"]
        assert kept and all(reviews[qid][:20] in prompt for qid, prompt in kept.items()), name
    assert "[record for P_q]" not in next(iter(by_name["zero-shot backbone"]["prompts"].values()))
    assert by_name["TAP-PER"]["per_user_params"] > 0 == by_name["non-personalized, same budget"]["per_user_params"]
    # onboarding: no fit, then one result per (rate, budget), each named with its rate, on the 2 held-out users
    onboarded = [row["method"] for row in data["onboarding"]]
    assert onboarded[:3] == ["TAP-PER, new user without a fit (mean row + P_q)",
                             "TAP-PER, onboarded (1-step P_u fit, lr 0.001)",
                             "TAP-PER, onboarded (1-step P_u fit, lr 0.01)"]
    assert not any(name.startswith("TAP-PER, onboarded") for name in by_name)  # not in the main table
    # every answer of every method is kept beside the table (LaMP's output format), the held-out users' too
    answers = json.loads((out / "answers" / "quality_LaMP_3.json").read_text())
    assert answers["task"] == "LaMP_3" and set(answers["methods"]) == set(by_name) | set(onboarded)
    for name, row in by_name.items():
        kept = {g["id"]: g["output"] for g in answers["methods"][name]["golds"]}
        assert len(kept) == 6 and {q: kept[q] for q in row["examples"]} == row["examples"], name
    assert len(answers["methods"][onboarded[0]]["golds"]) == 2
    md = (out / "quality_LaMP_3.md").read_text()
    assert "TAP-PER vs non-personalized, same budget" in md and "Onboarding: the 2 target users" in md
    runs = tmp_path / "runs"
    for key in ("zero-shot", "nonpersonal", "tapper", "tapper-int8", "onboard-cold", "onboard-1-lr0.001",
                "onboard-1-lr0.01"):
        assert (runs / f"result_{key}.json").is_file(), key

    again = compare(tmp_path)  # the same command: every kept result is reused, nothing trains
    assert again.exit_code == 0, again.output
    data2 = json.loads((out / "quality_LaMP_3.json").read_text())
    assert sorted(data2["kept_results_reused"]) == sorted(
        ["zero-shot", "nonpersonal", "tapper", "tapper-int8", "onboard-cold", "onboard-1-lr0.001",
         "onboard-1-lr0.01"])
    assert [r["metrics"] for r in data2["results"]] == [r["metrics"] for r in data["results"]]

    # a setting only the user rows read: the methods without them keep their results, TAP-PER runs again
    third = compare(tmp_path, "--set", "user_lr=0.01")
    assert third.exit_code == 0, third.output
    reused = json.loads((out / "quality_LaMP_3.json").read_text())["kept_results_reused"]
    assert "zero-shot" in reused and "nonpersonal" in reused
    assert "tapper" not in reused and "onboard-cold" not in reused


@pytest.mark.parametrize("args, message", [
    (["--sample", "--methods", "tapper,lora-soup"], "lora-soup"),
    (["--sample", "--set", "prefix_len=abc"], "prefix_len"),
    (["--sample", "--onboard-lrs", "fast"], "--onboard-lrs"),
    (["--questions", str(SAMPLE / "test_questions.json"), "--outputs", str(SAMPLE / "test_outputs.json")],
     "--train-questions"),
    (["--questions", str(SAMPLE / "test_questions.json"), "--outputs", str(SAMPLE / "test_outputs.json"),
      "--train-questions", str(SAMPLE / "test_questions.json"), "--train-outputs", str(SAMPLE / "test_outputs.json")],
     "both targets and stage-1 users"),
])
def test_compare_refuses_bad_requests_before_any_model_loads(tmp_path: Path, args, message):
    res = CliRunner().invoke(app, ["compare", "--model", "no-such-model", "--out", str(tmp_path / "o"),
                                   "--runs", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_method_names_and_onboarding_keys():
    assert parse_methods("floors, tapper", ablations=True) == ["floors", "tapper", "no-pu", "no-pq", "no-time",
                                                               "no-bridge"]
    with pytest.raises(ValueError, match="oppuu"):
        parse_methods("oppuu")
    assert onboard_key(16) == "onboard-16" and onboarded_name(16) == "TAP-PER, onboarded (16-step P_u fit)"
    assert onboard_key(16, 0.003) == "onboard-16-lr0.003"
    assert onboarded_name(16, 0.003) == "TAP-PER, onboarded (16-step P_u fit, lr 0.003)"


def test_the_baseline_registry_is_apart_from_common():
    """The arrows run one way: the methods import common, the registry imports the methods, common none."""
    import ast
    import inspect

    import tapper.baselines.common as common

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(common)))
                if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.startswith("tapper.baselines.") for m in imported), imported
    assert not hasattr(common, "make_baseline")
    assert registry.METHODS == ("rag", "pag", "oppu", "perpcs", "pplug")


def test_main_rows_keep_the_paired_differences_that_the_notes_show():
    """The JSON rows hold each method minus TAP-PER and minus the control with the notes' paired intervals, so
    a summary can read them without the per-question answers (which the JSON does not keep)."""
    from tapper.compare.report import CONTROL, compare_notes, main_rows
    from tapper.experiment import VariantResult
    from tapper.metrics import evaluate

    golds = {f"q{i}": str(1 + i % 5) for i in range(20)}
    answers = {"TAP-PER": golds, CONTROL: {q: "3" for q in golds}, "OPPU": {q: "5" for q in golds},
               "always 5 (floor)": {q: "5" for q in golds}}
    results = [VariantResult(name, evaluate("LaMP_3", golds, preds), 0, 0.0, 0.0, preds)
               for name, preds in answers.items()]
    _, data = main_rows(results, "LaMP_3", ["mae", "rmse"], golds, seed=0)
    by_name = {r["method"]: r for r in data}
    assert set(by_name["TAP-PER"]["paired"]) == {CONTROL} and set(by_name[CONTROL]["paired"]) == {"TAP-PER"}
    oppu = by_name["OPPU"]["paired"]
    assert oppu["TAP-PER"]["metric"] == "mae"
    assert oppu["TAP-PER"]["difference"] == pytest.approx(by_name["OPPU"]["metrics"]["mae"])  # TAP-PER's is 0
    assert oppu[CONTROL]["difference"] == pytest.approx(by_name["OPPU"]["metrics"]["mae"]
                                                        - by_name[CONTROL]["metrics"]["mae"])
    # the notes give TAP-PER minus OPPU on the same resamples: the same interval, flipped
    note = next(n for n in compare_notes(results, "LaMP_3", "mae", False, golds, 0) if "vs OPPU" in n)
    low, high = oppu["TAP-PER"]["ci95"]
    assert f"[{-high:+.4f}, {-low:+.4f}]" in note and low > 0


def test_hold_out_latest_turns_each_users_latest_item_into_their_question():
    from tapper.compare import HoldOutError, hold_out_latest
    from tapper.data.records import LampSplit, Question
    from tapper.data.sample import load_sample
    from tapper.data.tasks import get_task

    split = load_sample()["test"]
    held = hold_out_latest(split)
    task = get_task("LaMP_3")
    assert len(held.questions) == len(split.questions)
    for before, after in zip(split.questions, held.questions, strict=True):
        latest = before.profile[-1]
        assert after.user_id == before.user_id and after.id != before.id
        assert after.profile == before.profile[:-1]  # the held-out item leaves the history
        assert after.input == task.history_pair(latest)[0] != before.input
        assert held.golds[after.id] == str(latest.get("score")) and after.day == latest.day
    assert len(split.questions[0].profile) == len(held.questions[0].profile) + 1  # the input split is untouched

    short = Question(id="q1", input="x", profile=split.questions[0].profile[:1], user_id="u1")
    with pytest.raises(HoldOutError, match="'u1'.*needs at least 2"):
        hold_out_latest(LampSplit("LaMP_3", [short], {"q1": "5"}))
    citing = Question(id="q2", input="x", profile=split.questions[0].profile, user_id="u2")
    with pytest.raises(HoldOutError, match="of user 'u2' has no LaMP_1"):
        hold_out_latest(LampSplit("LaMP_1", [citing], {"q2": "[1]"}))


def test_compare_val_latest_scores_the_held_out_items_in_a_runs_dir_of_its_own(tmp_path: Path):
    def sweep_point(user_lr: str):
        return CliRunner().invoke(app, [
            "compare", "--sample", "--model", "tiny", "--methods", "floors,nonpersonal", "--max-users", "6",
            "--val-latest", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), *FAST,
            "--set", f"user_lr={user_lr}"])

    res = sweep_point("1e-3")
    assert res.exit_code == 0, res.output
    assert "[nonpersonal] running" in res.output
    # another point of the sweep: the control reads no user_lr, so it is taken from the first point's dir
    again = sweep_point("1e-2")
    assert again.exit_code == 0, again.output
    assert "[nonpersonal] reusing" in again.output and "sweep point" in again.output
    assert len([d for d in (tmp_path / "runs").iterdir() if d.name.startswith("val-latest-")]) == 2
    data = json.loads((tmp_path / "out" / "quality_LaMP_3_val_latest.json").read_text())
    assert data["target_users"] == 6
    table = (tmp_path / "out" / "quality_LaMP_3_val_latest.md").read_text()
    assert "6 target users scored on their latest history item" in table
    floor = data["results"][0]
    assert floor["examples"] and all("@" in qid for qid in floor["examples"])  # ids of the held-out questions
    assert any(p.name.startswith("val-latest-") for p in (tmp_path / "runs").iterdir())
    assert not (tmp_path / "out" / "quality_LaMP_3.json").exists()


def test_a_sweep_point_takes_only_the_results_whose_settings_it_shares(tmp_path: Path):
    from tapper.compare import Runner
    from tapper.experiment import VariantResult

    def result(name: str) -> VariantResult:
        return VariantResult(name=name, metrics={"mae": 0.5}, per_user_params=0, train_seconds=1.0,
                             predict_seconds=1.0)

    first = Runner(tmp_path / "val-latest-a", False, {"user_lr": 1e-3, "seed": 0})
    first.get("nonpersonal", lambda: result("control"))
    first.get("tapper", lambda: result("tapper at 1e-3"))
    kept = {k: json.loads((tmp_path / "val-latest-a" / f"result_{k}.json").read_text())["settings_read"]
            for k in ("nonpersonal", "tapper")}
    assert kept == {"nonpersonal": {"seed": 0}, "tapper": {"user_lr": 1e-3, "seed": 0}}  # what each one reads
    ran: list[str] = []

    def make(name: str):
        return lambda: ran.append(name) or result(name)

    second = Runner(tmp_path / "val-latest-b", False, {"user_lr": 1e-2, "seed": 0}, shared=[tmp_path / "val-latest-a"])
    assert second.get("nonpersonal", make("control")).name == "control"  # reads no user_lr: taken
    assert second.get("tapper", make("tapper at 1e-2")).name == "tapper at 1e-2"  # reads it: run again
    assert ran == ["tapper at 1e-2"] and (tmp_path / "val-latest-b" / "result_nonpersonal.json").is_file()
    third = Runner(tmp_path / "val-latest-c", False, {"user_lr": 1e-2, "seed": 1}, shared=[tmp_path / "val-latest-a"])
    assert third.get("nonpersonal", make("control, seed 1")).name == "control, seed 1"  # another seed: run


def test_the_runner_keeps_in_memory_only_the_trained_models_a_later_step_reads(tmp_path: Path):
    from tapper.compare import Runner
    from tapper.experiment import VariantResult

    def trained(name: str) -> VariantResult:  # any object stands in for the trained TapperModel
        return VariantResult(name=name, metrics={"mae": 0.5}, per_user_params=0, train_seconds=1.0,
                             predict_seconds=1.0, model=object())

    runner = Runner(tmp_path, False, {"seed": 0}, keep_models=["tapper"])
    for key in ("nonpersonal", "tapper", "no-pu"):
        assert runner.get(key, lambda k=key: trained(k)).model is None  # the result itself never holds one
    assert list(runner.models) == ["tapper"]  # each kept model is a whole backbone copy: only what is read


def test_pag_writes_its_summaries_with_the_summarizer_it_is_given(tmp_path: Path, monkeypatch):
    import tapper.baselines.pag as pag_module
    from tapper.backbone import tiny_backbone

    summarizer = tmp_path / "summarizer"  # another model than the backbone, as a local HF directory
    other = tiny_backbone(seed=1)
    other.model.save_pretrained(summarizer)
    other.tokenizer.save_pretrained(summarizer)
    writers: list[str] = []

    def summaries(model, tokenizer, prompts, *a, **k):
        writers.append(model.config._name_or_path)
        return ["likes tests"] * len(prompts)

    monkeypatch.setattr(pag_module, "generate_batch", summaries)

    def run(*extra: str):
        res = CliRunner().invoke(app, [
            "compare", "--sample", "--model", "tiny", "--methods", "nonpersonal,pag", "--max-users", "4",
            "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), *FAST, *extra])
        assert res.exit_code == 0, res.output
        return res.output

    run()
    assert writers and str(summarizer) not in writers  # by default the backbone writes them
    writers.clear()
    output = run("--pag-summarizer", str(summarizer))
    assert "[nonpersonal] reusing" in output and "[pag] running" in output  # only PAG reads the summarizer
    assert writers and set(writers) == {str(summarizer)}
    read = json.loads((tmp_path / "runs" / "result_pag.json").read_text())["settings_read"]
    assert read["pag_summarizer"] == str(summarizer)
    assert json.loads((tmp_path / "out" / "quality_LaMP_3.json").read_text())["pag_summarizer"] == str(summarizer)
    assert len(list((tmp_path / "runs").glob("stage1-pag-*"))) == 2  # its fine-tune read other summaries
    kept = json.loads((tmp_path / "out" / "quality_LaMP_3.json").read_text())["results"]
    pag_prompts = next(r for r in kept if r["method"].startswith("PAG"))["prompts"]
    assert all("User profile: likes tests\n" in p for p in pag_prompts.values())


def test_the_pag_summarizer_is_for_pag_only():
    res = CliRunner().invoke(app, ["baseline", "rag", "--task", "LaMP_3", "--questions", str(SAMPLE / "x.json"),
                                   "--out", "x", "--summarizer", "default"])
    assert res.exit_code != 0 and "--summarizer is for pag only" in res.output


def test_a_peer_variant_is_tagged_with_the_settings_its_peer_reads():
    settings = {"seed": 0, "user_lr": 1e-3, "prefix_len": 4, "pag_summarizer": "default", "onboard_steps": 10}
    for variant, (peer, _) in PEER_VARIANTS.items():
        assert method_settings(variant, settings) == method_settings(peer, settings)
    assert method_settings("pag-targets", settings) == {"seed": 0, "pag_summarizer": "default"}
    assert method_settings("rag-targets", settings) == {"seed": 0}


def test_a_stage2_setting_is_read_only_by_what_trains_in_or_after_stage_2(tmp_path: Path):
    from tapper.compare import Runner
    from tapper.experiment import VariantResult

    settings = {"seed": 0, "stage1_lr": 1e-4, "stage2_lr": 1e-3, "stage2_epochs": 2.0}
    for key in ("zero-shot", "task-lora", "rag", "pag", "rag-targets", "pag-targets", "perpcs"):
        assert method_settings(key, settings) == {"seed": 0, "stage1_lr": 1e-4}, key
    for key in ("tapper", "nonpersonal", "oppu", "pplug", "no-pu", "no-bridge"):
        assert method_settings(key, settings) == settings, key
    ran: list[str] = []

    def make(name: str):
        return lambda: ran.append(name) or VariantResult(name=name, metrics={"mae": 0.5}, per_user_params=0,
                                                         train_seconds=1.0, predict_seconds=1.0)

    for epochs in (2.0, 4.0):  # `--set stage2_epochs=4` on the same runs dir: RAG's kept result is taken
        runner = Runner(tmp_path, False, {**settings, "stage2_epochs": epochs})
        runner.get("rag", make(f"rag {epochs}"))
        runner.get("nonpersonal", make(f"control {epochs}"))
    assert ran == ["rag 2.0", "control 2.0", "control 4.0"]


def test_rag_fine_tuned_on_the_targets_too_is_a_row_of_its_own(tmp_path: Path):
    res = CliRunner().invoke(app, [
        "compare", "--sample", "--model", "tiny", "--methods", "rag,rag-targets", "--max-users", "4",
        "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), *FAST])
    assert res.exit_code == 0, res.output
    names = [r["method"] for r in json.loads((tmp_path / "out" / "quality_LaMP_3.json").read_text())["results"]]
    assert names == ["RAG (k=4, bm25, fine-tuned with records)",
                     "RAG+targets (k=4, bm25, fine-tuned with records and the targets' history pairs)"]
    runs = tmp_path / "runs"
    assert (runs / "result_rag.json").is_file() and (runs / "result_rag-targets.json").is_file()
    stamps = {d.name.rsplit("-", 1)[0]: json.loads((d / "task_adapter" / "tapper_stage1.json").read_text())
              for d in runs.glob("stage1-rag*")}
    assert set(stamps) == {"stage1-rag", "stage1-rag-targets"}
    # two history pairs (max_history_pairs) of each of the 4 targets join the other users' pairs
    assert stamps["stage1-rag-targets"]["examples"] == stamps["stage1-rag"]["examples"] + 2 * 4
