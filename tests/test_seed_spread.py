"""bench/seed_spread.py: per-seed gaps and per-method spread from kept answers, and clear refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from seed_spread import main, result_file, spread, table_seed  # noqa: E402

GOLDS = {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}


def test_spread_pairs_a_with_b_in_each_seed_and_each_method_across_seeds():
    answers = {
        "0": {"tapper": {"q1": "5", "q2": "1", "q3": "3", "q4": "4"},      # MAE 0
              "nonpersonal": {"q1": "5", "q2": "5", "q3": "3", "q4": "4"}},  # MAE 1
        "1": {"tapper": {"q1": "5", "q2": "3", "q3": "3", "q4": "4"},      # MAE 0.5
              "nonpersonal": {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}},  # MAE 0
    }
    out = spread("LaMP_3", GOLDS, answers, "tapper", ["nonpersonal"])
    assert out["metric"] == "mae" and out["higher_is_better"] is False
    assert out["per_seed"]["0"]["scores"] == {"tapper": 0.0, "nonpersonal": 1.0}
    assert out["per_seed"]["0"]["gaps"]["nonpersonal"]["difference"] == pytest.approx(-1.0)
    assert out["per_seed"]["1"]["gaps"]["nonpersonal"]["difference"] == pytest.approx(0.5)
    gap = out["gaps"]["nonpersonal"]
    assert gap["mean"] == pytest.approx(-0.25) and gap["same_sign"] is False
    tapper = out["per_method"]["tapper"]
    assert (tapper["min"], tapper["max"], tapper["mean"]) == (0.0, 0.5, 0.25)
    between = tapper["between_seeds"]["0 vs 1"]
    assert between["answers_differ"] == 1 and between["difference"] == pytest.approx(-0.5)


def test_a_seed_without_the_method_is_named(tmp_path: Path):
    with pytest.raises(SystemExit, match="result_tapper.json: no kept result of 'tapper'"):
        result_file(tmp_path, "tapper")


def test_one_seed_is_refused_before_any_data_is_read(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"0={tmp_path}"])
    assert "give at least two seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"0={tmp_path}", "--runs", f"0={tmp_path}"])
    assert "seed '0' given twice" in capsys.readouterr().err


def write_table(path: Path, examples: dict[str, str]) -> Path:
    path.write_text(json.dumps({"task": "LaMP_3", "results": [
        {"method": "TAP-PER", "metrics": {"mae": 0.25}, "ci95": {"mae": [0.0, 0.5]}, "examples": examples,
         "paired": {"control": {"metric": "mae", "difference": -0.5, "ci95": [-1.0, 0.0]}}},
        {"method": "control", "metrics": {"mae": 0.75}, "ci95": {"mae": [0.5, 1.0]}, "examples": {}, "paired": {}},
    ]}), encoding="utf-8")
    return path


def test_a_seed_known_only_by_its_table_adds_scores_and_gap_but_no_pairs(tmp_path: Path):
    names = {"tapper": "TAP-PER", "nonpersonal": "control"}
    tabled = {"0": table_seed(write_table(tmp_path / "t.json", {"q1": "5"}), names, "tapper", ["nonpersonal"],
                              "mae", GOLDS)}
    answers = {"1": {"tapper": {"q1": "5", "q2": "3", "q3": "3", "q4": "4"},       # MAE 0.5
                     "nonpersonal": {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}}}  # MAE 0
    out = spread("LaMP_3", GOLDS, answers, "tapper", ["nonpersonal"], tabled=tabled)
    assert list(out["per_seed"]) == ["0", "1"]
    assert out["per_seed"]["0"]["scores"] == {"tapper": 0.25, "nonpersonal": 0.75}
    assert out["per_seed"]["0"]["gaps"]["nonpersonal"]["answers_differ"] is None
    gap = out["gaps"]["nonpersonal"]
    assert gap["mean"] == pytest.approx(0.0) and gap["same_sign"] is False
    assert out["per_method"]["tapper"]["mean"] == pytest.approx(0.375)
    assert out["per_method"]["tapper"]["between_seeds"] == {}


def test_a_table_of_other_users_or_without_the_method_is_refused(tmp_path: Path):
    names = {"tapper": "TAP-PER", "nonpersonal": "control"}
    with pytest.raises(SystemExit, match="answers questions these users do not have"):
        table_seed(write_table(tmp_path / "t.json", {"q9": "5"}), names, "tapper", ["nonpersonal"], "mae", GOLDS)
    with pytest.raises(SystemExit, match="no row named 'PPlug'"):
        table_seed(write_table(tmp_path / "t.json", {}), {**names, "pplug": "PPlug"}, "tapper", ["nonpersonal"],
                   "mae", GOLDS)


def test_tables_alone_are_refused(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--table", f"0={tmp_path}/a.json", "--table", f"1={tmp_path}/b.json"])
    assert "give at least one seed's answers (its runs dir or its answers files)" in capsys.readouterr().err


def test_a_table_from_before_rows_kept_pairs_takes_the_gap_from_its_report_notes(tmp_path: Path):
    path = tmp_path / "quality_x.json"
    path.write_text(json.dumps({"task": "LaMP_3", "results": [
        {"method": "TAP-PER", "metrics": {"mae": 0.25}, "ci95": {"mae": [0.0, 0.5]}, "examples": {"q1": "5"}},
        {"method": "control", "metrics": {"mae": 0.75}, "ci95": {"mae": [0.5, 1.0]}, "examples": {}},
    ]}), encoding="utf-8")
    names = {"tapper": "TAP-PER", "nonpersonal": "control"}
    with pytest.raises(SystemExit, match="no mae pair with 'control'"):
        table_seed(path, names, "tapper", ["nonpersonal"], "mae", GOLDS)
    path.with_suffix(".md").write_text(
        "- TAP-PER vs control: mae 0.2500 vs 0.7500, difference -0.5000 [-0.9000, -0.1000]: better\n",
        encoding="utf-8")
    gap = table_seed(path, names, "tapper", ["nonpersonal"], "mae", GOLDS)["gaps"]["nonpersonal"]
    assert gap["difference"] == pytest.approx(-0.5) and gap["ci95"] == [-0.9, -0.1]


def test_the_plot_draws_every_seed(tmp_path: Path):
    from seed_spread import plot_seeds

    from tapper.compare.report import save_plot

    answers = {s: {"tapper": {"q1": "5", "q2": a, "q3": "3", "q4": "4"},
                   "nonpersonal": {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}} for s, a in (("1", "3"), ("2", "2"))}
    out = spread("LaMP_3", GOLDS, answers, "tapper", ["nonpersonal"])
    save_plot(tmp_path / "s.png", plot_seeds(out, "x", ["tapper", "nonpersonal"]))
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")


def test_seeds_made_with_other_settings_are_refused_naming_the_setting(tmp_path: Path):
    from pair_results import read_kept
    from seed_spread import check_same_settings, table_settings

    run = {"seed": 1, "stage1_history_pairs": 0, "user_lr": 0.003}
    assert check_same_settings({"a": run, "b": {**run, "seed": 2}, "c": None}) == ["c"]  # the seed may differ
    with pytest.raises(SystemExit, match=r"stage1_history_pairs=0 in a, 4 in b"):
        check_same_settings({"a": run, "b": {**run, "seed": 2, "stage1_history_pairs": 4}})
    # a table's configs count too; keys one side lacks (a control reads no user_lr) are not compared
    table = tmp_path / "quality_LaMP_2N.json"
    table.write_text(json.dumps({"model_config": {"prefix_len": 8},
                                 "train_config": {"seed": 0, "stage1_history_pairs": 4}}), encoding="utf-8")
    assert table_settings(table) == {"prefix_len": 8, "seed": 0, "stage1_history_pairs": 4}
    control = {"seed": 1, "stage1_history_pairs": 4}
    assert check_same_settings({"t": table_settings(table), "r": control}) == []
    with pytest.raises(SystemExit, match="stage1_history_pairs"):
        check_same_settings({"t": table_settings(table), "r": run})
    kept = tmp_path / "result_tapper.json"
    kept.write_text(json.dumps({"name": "TAP-PER", "settings": "abc", "predictions": {}}), encoding="utf-8")
    assert read_kept(kept).get("settings_read") is None  # kept before results recorded their settings
    kept.write_text(json.dumps({"name": "TAP-PER", "settings": "abc"}), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"result_tapper.json: not a kept result of bench/quality.py \('predictions'"):
        read_kept(kept)


def test_several_opponents_each_get_a_gap_per_seed_and_a_verdict_count():
    from seed_spread import tables

    best = {"q1": "5", "q2": "1", "q3": "3", "q4": "4"}
    answers = {s: {"tapper": best,
                   "nonpersonal": {**best, "q1": "1", "q2": "5", "q3": "5"},  # MAE 10/4 in both seeds
                   "oppu": {**best, "q2": worse}}
               for s, worse in (("1", "1"), ("2", "2"))}
    out = spread("LaMP_3", GOLDS, answers, "tapper", ["nonpersonal", "oppu"])
    assert out["bs"] == ["nonpersonal", "oppu"]
    assert [out["per_seed"][s]["gaps"]["nonpersonal"]["difference"] for s in "12"] == [-2.5, -2.5]
    assert [out["per_seed"][s]["gaps"]["oppu"]["difference"] for s in "12"] == [0.0, -0.25]
    assert out["gaps"]["nonpersonal"]["verdicts"] == {"ahead": 2}
    assert out["gaps"]["oppu"]["same_sign"] is False and out["gaps"]["oppu"]["mean"] == pytest.approx(-0.125)
    per_seed = tables(out, ["tapper", "nonpersonal", "oppu"])[0]
    assert per_seed.columns[-2:] == ["tapper - nonpersonal", "tapper - oppu"]
    assert per_seed.rows[0][-1].startswith("+0.000 [+0.000, +0.000] tie (0 answers differ)")


def test_a_runs_seed_own_table_must_come_from_that_runs_dir(tmp_path: Path, capsys):
    from seed_spread import table_settings

    table = tmp_path / "quality_LaMP_2N.json"
    table.write_text(json.dumps({"runs": str(tmp_path / "seed1"), "train_config": {"seed": 1}}), encoding="utf-8")
    assert table_settings(table, tmp_path / "seed1") == {"seed": 1}
    with pytest.raises(SystemExit, match="made from the runs dir .*seed1, not .*seed2"):
        table_settings(table, tmp_path / "seed2")
    # a seed's runs dir and its own table are one seed, not two
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"1={tmp_path}/seed1", "--table", f"1={table}"])
    assert "give at least two seeds" in capsys.readouterr().err
    # without --runs a seed is one table
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"1={tmp_path}/seed1", "--table", f"0={table}",
              "--table", f"0={table}"])
    assert "seed '0' given twice (without --runs, a seed is one table)" in capsys.readouterr().err


def test_pooled_ci_of_one_run_is_the_paired_ci_and_two_levels_widen_it():
    from tapper.compare.report import paired_difference_ci, pooled_difference_ci

    golds = {f"q{i}": str(1 + i % 5) for i in range(40)}
    right = dict(golds)
    wrong_half = {q: (str(int(g) + 1) if g != "5" else "4") if i % 2 else g for i, (q, g) in enumerate(golds.items())}
    # one run: the pooled interval is the paired one (same resamples of the same questions)
    one = pooled_difference_ci("LaMP_3", "mae", golds, [(right, wrong_half)], seed=3)
    assert one[0] == pytest.approx(-0.5)
    assert one[1:] == pytest.approx(paired_difference_ci("LaMP_3", "mae", golds, right, wrong_half, 3))
    # two runs that disagree (a ahead by 0.5 in one, behind by 0.5 in the other): the mean is 0, and the
    # two-level interval, which draws runs too, is wider than the one that keeps both runs
    runs = [(right, wrong_half), (wrong_half, right)]
    mean, low, high = pooled_difference_ci("LaMP_3", "mae", golds, runs, seed=3)
    assert mean == pytest.approx(0.0) and (low, high) == pytest.approx((0.0, 0.0))
    mean, low2, high2 = pooled_difference_ci("LaMP_3", "mae", golds, runs, seed=3, resample_runs=True)
    assert low2 < -0.3 and high2 > 0.3
    with pytest.raises(ValueError, match="not a mean of per-question scores"):
        pooled_difference_ci("LaMP_3", "rmse", golds, runs, seed=3)


def test_spread_pools_the_seeds_with_answers_per_opponent():
    golds = {f"q{i}": str(1 + i % 5) for i in range(30)}
    off_by_one = {q: str(min(5, int(g) + 1)) if int(g) < 5 else "4" for q, g in golds.items()}  # MAE 1
    answers = {s: {"tapper": dict(golds), "nonpersonal": off_by_one, "oppu": dict(golds)} for s in ("1", "2")}
    out = spread("LaMP_3", golds, answers, "tapper", ["nonpersonal", "oppu"])
    ahead = out["gaps"]["nonpersonal"]["pooled"]
    assert ahead["seeds"] == ["1", "2"] and ahead["difference"] == pytest.approx(-1.0)
    assert ahead["users"]["verdict"] == ahead["users_and_seeds"]["verdict"] == "ahead"
    same = out["gaps"]["oppu"]["pooled"]
    assert same["difference"] == 0.0 and same["users"]["ci95"] == [0.0, 0.0]
    assert spread("LaMP_3", golds, {"1": answers["1"]}, "tapper", ["oppu"],
                  tabled={"0": {"scores": {"tapper": 0.0, "nonpersonal": 1.0, "oppu": 0.0},
                                "gaps": {"oppu": {"difference": 0.0, "ci95": [0.0, 0.0], "answers_differ": None}}}}
                  )["gaps"]["oppu"]["pooled"] is None  # one seed with answers: nothing to pool


def test_a_floor_opponent_is_made_once_and_answers_alike_in_every_seed(tmp_path: Path):
    from seed_spread import read_methods
    from test_pair_results import _rating_split

    target = _rating_split({"q1": [4, 4], "q2": [1, 2]}, {"q1": "4", "q2": "2"})
    seeds = {}
    for seed, answers in (("1", {"q1": "4", "q2": "2"}), ("2", {"q1": "5", "q2": "2"})):
        seeds[seed] = tmp_path / seed
        seeds[seed].mkdir()
        (seeds[seed] / "result_tapper.json").write_text(json.dumps({"name": "TAP-PER", "predictions": answers}))
    kept = read_methods(seeds, ["tapper", "floor:always 5"], target, _rating_split({}, {}))
    assert kept["1"]["floor:always 5"] == kept["2"]["floor:always 5"] == {
        "name": "always 5 (floor)", "predictions": {"q1": "5", "q2": "5"}}
    assert kept["2"]["tapper"]["predictions"] == {"q1": "5", "q2": "2"}
    answers = {s: {m: kept[s][m]["predictions"] for m in kept[s]} for s in kept}
    out = spread("LaMP_3", {"q1": "4", "q2": "2"}, answers, "tapper", ["floor:always 5"])
    assert [d["gaps"]["floor:always 5"]["difference"] for d in out["per_seed"].values()] == [-2.0, -1.5]
    with pytest.raises(SystemExit, match="no floor of LaMP_3 matches"):
        read_methods(seeds, ["tapper", "floor:majority"], target, _rating_split({}, {}))


def test_a_table_pair_kept_on_the_opponent_row_is_flipped_to_a_minus_b(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"task": "LaMP_3", "results": [
        {"method": "TAP-PER", "metrics": {"mae": 0.25}, "ci95": {"mae": [0.0, 0.5]}, "examples": {}, "paired": {}},
        {"method": "always 5 (floor)", "metrics": {"mae": 1.0}, "ci95": {"mae": [0.5, 1.5]}, "examples": {},
         "paired": {"TAP-PER": {"metric": "mae", "difference": 0.75, "ci95": [0.25, 1.25]}}},
    ]}), encoding="utf-8")
    seed = table_seed(path, {"tapper": "TAP-PER", "floor:always 5": "always 5 (floor)"}, "tapper",
                      ["floor:always 5"], "mae", GOLDS)
    assert seed["gaps"]["floor:always 5"]["difference"] == pytest.approx(-0.75)
    assert seed["gaps"]["floor:always 5"]["ci95"] == [-1.25, -0.25]


def _answers_file(out: Path, name: str, rows: dict[str, dict[str, str]], settings: dict | None = None) -> Path:
    """An answers file as bench/quality.py writes it (out/answers/<name>.json), and its table beside it."""
    from tapper.compare.report import write_answers

    if settings is not None:
        (out / f"{name}.json").write_text(json.dumps({"model_config": {}, "train_config": settings}),
                                          encoding="utf-8")
    return write_answers(out, name, "LaMP_3", rows, {})


def test_answers_files_give_each_method_its_one_row(tmp_path: Path):
    from pair_results import read_answers_file
    from seed_spread import answers_of

    tapper_run = _answers_file(tmp_path, "s1-tapper", {"TAP-PER": {"q1": "4"},
                                                       "TAP-PER (int8 user table)": {"q1": "3"}})
    peers_run = _answers_file(tmp_path, "s1-peers", {"RAG (k=4, bm25, fine-tuned with records)": {"q1": "5"},
                                                     "TAP-PER without P_u": {"q1": "1"}})
    files = [(f, read_answers_file(f)) for f in (tapper_run, peers_run)]
    assert answers_of(files, "tapper") == {"name": "TAP-PER", "predictions": {"q1": "4"},  # not its int8 row
                                           "file": tapper_run}
    assert answers_of(files, "tapper-int8")["predictions"] == {"q1": "3"}
    assert answers_of(files, "rag") == {"name": "RAG (k=4, bm25, fine-tuned with records)",
                                        "predictions": {"q1": "5"}, "file": peers_run}
    assert answers_of(files, "no-pu")["predictions"] == {"q1": "1"}  # "TAP-PER without P_u" is not TAP-PER's
    with pytest.raises(SystemExit, match=r"method 'pag' needs exactly one row among .*s1-tapper.json, "
                                         r".*s1-peers.json; found none"):
        answers_of(files, "pag")
    with pytest.raises(SystemExit, match=r"method 'tapper' needs exactly one row .* found 'TAP-PER' in .*, "
                                         r"'TAP-PER' in "):
        answers_of([files[0], files[0]], "tapper")
    with pytest.raises(SystemExit, match="method 'bogus' has no known row name"):
        answers_of(files, "bogus")


def test_seeds_given_by_answers_files_pool_like_runs_dirs(tmp_path: Path, monkeypatch):
    import seed_spread
    from test_pair_results import _rating_split

    golds = {f"q{i}": str(1 + i % 5) for i in range(20)}
    target = _rating_split({q: [3] for q in golds}, golds)
    monkeypatch.setattr(seed_spread, "users", lambda args: (target, _rating_split({}, {})))
    off = {q: "3" for q in golds}
    results = tmp_path / "results"
    results.mkdir()
    files = []
    for s in ("1", "2"):  # TAP-PER exact, the control answers 3 everywhere; two runs' files per seed
        files += ["--answers", f"{s}={_answers_file(results, f's{s}-tapper', {'TAP-PER': golds}, {'seed': int(s)})}",
                  "--answers", f"{s}={_answers_file(results, f's{s}-control', {'non-personalized, same budget': off})}"]
    main(["--task", "LaMP_3", "--label", "ans", "--out", str(tmp_path), *files])
    out = json.loads((tmp_path / "seed_spread_ans.json").read_text(encoding="utf-8"))
    assert list(out["per_seed"]) == ["1", "2"] and out["answers"]["1"][0].endswith("s1-tapper.json")
    assert out["per_seed"]["1"]["scores"]["tapper"] == 0.0
    pooled = out["gaps"]["nonpersonal"]["pooled"]
    assert pooled["seeds"] == ["1", "2"] and pooled["users"]["verdict"] == "ahead"
    # the tables beside the answers files are checked: another setting there stops the report
    (results / "s2-tapper.json").write_text(json.dumps({"train_config": {"seed": 2, "stage2_epochs": 4}}),
                                            encoding="utf-8")
    (results / "s1-tapper.json").write_text(json.dumps({"train_config": {"seed": 1, "stage2_epochs": 2}}),
                                            encoding="utf-8")
    with pytest.raises(SystemExit, match=r"stage2_epochs=2 in .*s1-tapper.json \(tapper\), 4 in .*s2-tapper.json"):
        main(["--task", "LaMP_3", "--label", "ans", "--out", str(tmp_path), *files])


def test_each_method_is_checked_on_the_settings_it_reads(tmp_path: Path, monkeypatch):
    """A peer trained before stage 2 (RAG+targets) may come from a table with another stage-2 length than
    TAP-PER's of the same seed: pooled. A setting the peer reads (stage1_lr) still stops the report."""
    import seed_spread
    from test_pair_results import _rating_split

    golds = {f"q{i}": str(1 + i % 5) for i in range(20)}
    target = _rating_split({q: [3] for q in golds}, golds)
    monkeypatch.setattr(seed_spread, "users", lambda args: (target, _rating_split({}, {})))
    results = tmp_path / "results"
    results.mkdir()
    peer = "RAG+targets (k=4, bm25, fine-tuned with records and the targets' history pairs)"
    files = []
    for s, peer_epochs in (("0", 2), ("1", 4)):  # seed 0's peer was run beside TAP-PER at 2 epochs
        for run, rows, epochs in (("tapper", {"TAP-PER": golds}, 4), ("peer", {peer: {q: "3" for q in golds}},
                                                                         peer_epochs)):
            answers = _answers_file(results, f"s{s}-{run}", rows,
                                    {"seed": int(s), "stage2_epochs": epochs, "stage1_lr": 1e-4})
            files += ["--answers", f"{s}={answers}"]
    args = ["--task", "LaMP_3", "--label", "peer", "--out", str(tmp_path), "--methods", "tapper,rag-targets",
            "--b", "rag-targets", *files]
    main(args)
    out = json.loads((tmp_path / "seed_spread_peer.json").read_text(encoding="utf-8"))
    assert out["gaps"]["rag-targets"]["pooled"]["seeds"] == ["0", "1"]
    (results / "s0-peer.json").write_text(json.dumps(
        {"train_config": {"seed": 0, "stage2_epochs": 2, "stage1_lr": 3e-4}}), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"stage1_lr=.*0.0003 in .*s0-peer.json \(rag-targets\)"):
        main(args)


def test_a_seed_is_given_by_its_runs_dir_or_its_answers_not_both(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--runs", f"1={tmp_path}", "--answers", f"1={tmp_path}/a.json"])
    assert "seed '1' has a runs dir already (--runs)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "LaMP_3", "--label", "x", "--answers", f"1={tmp_path}/a.json"])
    assert "give at least two seeds" in capsys.readouterr().err
