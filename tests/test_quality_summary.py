"""bench/quality_summary.py on two small quality results in bench/quality.py's shape: one with the paired CIs
kept in the JSON, one older one whose paired CIs are only in its .md notes (one of them stale)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import quality_summary  # noqa: E402  (a bench script: found through bench/ on sys.path)
from quality_summary import SummaryError, default_labels, summarize, verdict  # noqa: E402

CONTROL = "non-personalized, same budget"


def row(method: str, metric: str, value: float, ci: list[float], paired: dict | None = None) -> dict:
    """One results row as tapper.compare.report.main_rows writes it."""
    other = {"accuracy": "f1", "mae": "rmse"}[metric]
    out = {"method": method, "metrics": {metric: value, other: value / 2}, "ci95": {metric: ci, other: ci},
           "per_user_params": 0, "train_seconds": 1.0, "predict_seconds": 0.5, "examples": {"q1": "x"},
           "prompts": {"q1": "prompt"}}
    if paired is not None:
        out["paired"] = paired
    return out


def quality_json(task: str, commit: str, users: int, results: list[dict]) -> dict:
    return {"benchmark": f"quality_{task}", "title": f"Quality on {task}", "command": f"bench/quality.py --task {task}",
            "commit": commit, "tapper_source": "abc", "machine": {"cpus": 2}, "finished_utc": "2026-12-01 00:00:00",
            "wall_seconds": 1.0, "task": task, "seed": 0, "backbone": "SmolLM2-135M-Instruct", "target_users": users,
            "stage1_users": 300, "data": {}, "model_config": {}, "train_config": {}, "results": results,
            "runs": "runs/x"}


def paired(diff: float, low: float, high: float, metric: str = "accuracy") -> dict:
    return {"metric": metric, "difference": diff, "ci95": [low, high]}


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    res.mkdir()
    # LaMP_2N: written with the paired entries; its .md notes disagree and must be ignored
    lamp2n = [
        row("user's most frequent past category (floor)", "accuracy", 0.78, [0.70, 0.86],
            {"TAP-PER": paired(-0.06, -0.11, -0.02), CONTROL: paired(0.01, -0.04, 0.06)}),
        row(CONTROL, "accuracy", 0.77, [0.69, 0.85], {"TAP-PER": paired(-0.07, -0.125, -0.031)}),
        row("TAP-PER", "accuracy", 0.84, [0.77, 0.92], {CONTROL: paired(0.07, 0.031, 0.125)}),
        row("PPlug", "accuracy", 0.81, [0.73, 0.89],
            {"TAP-PER": paired(-0.03, -0.09, 0.02), CONTROL: paired(0.04, -0.02, 0.1)}),
    ]
    (res / "quality_LaMP_2N.json").write_text(json.dumps(quality_json("LaMP_2N", "aaa1111", 96, lamp2n)))
    (res / "quality_LaMP_2N.md").write_text("- TAP-PER vs PPlug: accuracy 0.8400 vs 0.8100, difference +0.0300 "
                                            "[+0.5000, +0.6000]: better.\n")
    # LaMP_3: an older result without them; the PPlug note is from another run (0.9999 is not its value)
    lamp3 = [row("always 5 (floor)", "mae", 0.52, [0.35, 0.70]), row(CONTROL, "mae", 0.54, [0.38, 0.70]),
             row("TAP-PER", "mae", 0.43, [0.29, 0.59]), row("OPPU", "mae", 0.64, [0.45, 0.83]),
             row("PPlug", "mae", 0.52, [0.35, 0.70])]
    (res / "quality_LaMP_3.json").write_text(json.dumps(quality_json("LaMP_3", "bbb2222", 69, lamp3)))
    (res / "quality_LaMP_3.md").write_text("\n".join([
        "# Quality on LaMP_3", "", "Notes:", "",
        "- TAP-PER vs non-personalized, same budget: mae 0.4300 vs 0.5400, difference -0.1100 [-0.2200, +0.0100]: "
        "better (within noise: the 95% CI of the difference spans 0).",
        "- TAP-PER vs OPPU: mae 0.4300 vs 0.6400, difference -0.2100 [-0.4200, +0.0000]: better (within noise).",
        "- TAP-PER vs PPlug: mae 0.4300 vs 0.9999, difference -0.5699 [-0.7000, -0.4000]: better.", ""]))
    # a seed spread in bench/seed_spread.py's shape: two opponents, one pooled over seeds 1-2
    (res / "seed_spread_LaMP_2N.json").write_text(json.dumps(seed_spread_json()))
    # neither is summarized by default
    (res / "quality_LaMP_3_val.json").write_text("{}")
    (res / "quality_LaMP_2N_val_latest.json").write_text("{}")
    (res / "quality_LaMP_4_compare_cli.json").write_text("{}")
    return res


def seed_spread_json() -> dict:
    pooled = {"seeds": ["1", "2"], "difference": 0.06, "users": {"ci95": [0.02, 0.1], "verdict": "ahead"},
              "users_and_seeds": {"ci95": [0.0, 0.12], "verdict": "ahead, at the edge"}}
    return {"task": "LaMP_2N", "users": 96, "metric": "accuracy", "higher_is_better": True, "a": "tapper",
            "bs": ["nonpersonal", "floor:most frequent"], "per_seed": {"2": {}, "0": {}, "1": {}},
            "gaps": {"nonpersonal": {"mean": 0.065, "same_sign": True, "pooled": pooled,
                                     "verdicts": {"tie": 1, "ahead": 2}},
                     "floor:most frequent": {"mean": -0.01, "same_sign": False, "pooled": None,
                                             "verdicts": {"tie": 3}}}}


def md_rows(md: str) -> dict[tuple[str, str], list[str]]:
    """{(task label, method): the row's cells after the method} from the summary's Markdown tables."""
    rows, label = {}, None
    for line in md.splitlines():
        if line.startswith("### "):
            label = line[4:].split(":")[0]
        elif line.startswith("| ") and not line.startswith(("| method", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(label, cells[0])] = cells[1:]
    return rows


def test_summary_rows_hold_each_task_metric_ci_and_paired_differences(results_dir: Path, tmp_path: Path):
    assert default_labels(results_dir) == ["LaMP_2N", "LaMP_3"]
    out = tmp_path / "out"
    quality_summary.main(["--results", str(results_dir), "--out", str(out)])
    md = (out / "quality_summary.md").read_text()
    rows = md_rows(md)
    # columns: metric, 95% CI, - control, its paired CI, - TAP-PER, its paired CI
    assert rows[("LaMP_2N", "TAP-PER")] == ["0.84", "0.770 - 0.920", "+0.0700", "[+0.0310, +0.1250]", "-", "-"]
    assert rows[("LaMP_2N", "PPlug")] == ["0.81", "0.730 - 0.890", "+0.0400", "[-0.0200, +0.1000]", "-0.0300",
                                          "[-0.0900, +0.0200]"]  # the JSON's, not the .md's
    assert rows[("LaMP_2N", CONTROL)][2:] == ["-", "-", "-0.0700", "[-0.1250, -0.0310]"]
    # LaMP_3 from the notes: TAP-PER minus each method, flipped to each method minus TAP-PER
    assert rows[("LaMP_3", "TAP-PER")] == ["0.43", "0.290 - 0.590", "-0.1100", "[-0.2200, +0.0100]", "-", "-"]
    assert rows[("LaMP_3", "OPPU")] == ["0.64", "0.450 - 0.830", "+0.1000", "-", "+0.2100", "[+0.0000, +0.4200]"]
    assert rows[("LaMP_3", CONTROL)][4:] == ["+0.1100", "[-0.0100, +0.2200]"]
    assert rows[("LaMP_3", "PPlug")][4:] == ["+0.0900", "-"]  # the stale note is not used
    assert rows[("LaMP_3", "always 5 (floor)")][2:] == ["-0.0200", "-", "+0.0900", "-"]
    # each task's header names where its numbers came from; the differing commits are listed
    assert ("### LaMP_2N: 96 users, backbone SmolLM2-135M-Instruct, commit aaa1111" in md
            and "Command: `bench/quality.py --task LaMP_2N`" in md)
    assert "### LaMP_3: 69 users" in md and "mae, lower is better" in md
    assert "different commits: LaMP_2N aaa1111, LaMP_3 bbb2222" in md
    assert (out / "quality_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "quality_summary.json").read_text())
    assert [t["paired_source"] for t in data["tasks"]] == ["json", "quality_LaMP_3.md notes"]
    assert data["tasks"][1]["higher_better"] is False and data["commits"] == {"LaMP_2N": "aaa1111",
                                                                              "LaMP_3": "bbb2222"}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON file"),
    (json.dumps({"task": "LaMP_3", "results": [{"method": "TAP-PER", "metrics": {"rmse": 1.0}, "ci95": {}}]}),
     "'mae'"),
    (json.dumps({"task": "LaMP_3", "results": []}), "'results': empty"),
])
def test_a_malformed_results_file_is_named_in_the_error(results_dir: Path, tmp_path: Path, content: str,
                                                        message: str):
    bad = results_dir / "quality_LaMP_7.json"
    bad.write_text(content)
    with pytest.raises(SummaryError, match=message) as err:
        summarize(["LaMP_2N", "LaMP_7"], results_dir)
    assert str(bad) in str(err.value)
    with pytest.raises(SystemExit, match="quality_LaMP_7.json"):
        quality_summary.main(["--labels", "LaMP_7", "--results", str(results_dir), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_missing_results_file_is_named_in_the_error(results_dir: Path):
    with pytest.raises(SummaryError, match="quality_LaMP_5R.json: no such results file"):
        summarize(["LaMP_5R"], results_dir)


def test_the_scoreboard_gives_tapper_minus_each_opponent_and_the_verdict(results_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    quality_summary.main(["--results", str(results_dir), "--out", str(out)])
    board = {b["label"]: b for b in json.loads((out / "quality_summary.json").read_text())["scoreboard"]}
    # LaMP_2N: TAP-PER minus the control and PPlug, flipped from the rows' "TAP-PER" entries
    cells = board["LaMP_2N"]["cells"]
    assert cells["control"]["verdict"] == "ahead" and cells["control"]["ci95"] == pytest.approx([0.031, 0.125])
    assert cells["PPlug"]["verdict"] == "tie" and cells["PPlug"]["difference"] == pytest.approx(0.03)
    assert cells["best floor"]["method"] == "user's most frequent past category (floor)"
    assert cells["best floor"]["verdict"] == "ahead"
    assert "RAG" not in cells and "w/o P_u" not in cells  # not run: no cell, shown as "not run"
    # LaMP_3 (MAE, lower is better): an interval ending at 0 is "at the edge"; no note, no verdict
    cells = board["LaMP_3"]["cells"]
    assert cells["OPPU"]["difference"] == pytest.approx(-0.21) and cells["OPPU"]["verdict"] == "ahead, at the edge"
    assert cells["PPlug"]["verdict"] == "no paired CI"  # its note is stale
    assert cells["best floor"]["method"] == "always 5 (floor)"  # the lowest MAE of the floors
    assert board["LaMP_3"]["counts"]["ahead, at the edge"] == 1
    md = (out / "quality_summary.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| LaMP_2N (96 users, accuracy)"))
    assert "2 ahead; 1 tie" in line and "ahead: +0.070 [+0.031, +0.125]" in line and "not run" in line


def test_a_rerun_replaces_one_scoreboard_cell_from_a_pairs_file_or_a_quality_table(results_dir: Path,
                                                                                   tmp_path: Path):
    # a PPlug rerun paired by bench/pair_results.py (listed first; an older pair of the same peer after it)
    pairs = [{"a": "TAP-PER (runs/a.json)", "b": "PPlug (runs/new.json)", "difference": 0.05, "ci95": [0.01, 0.09]},
             {"a": "TAP-PER (runs/a.json)", "b": "PPlug (runs/old.json)", "difference": 0.03, "ci95": [-0.02, 0.09]}]
    (results_dir / "pag_rerun_2n.json").write_text(json.dumps({"task": "LaMP_2N", "pairs": pairs}))
    # an OPPU rerun run with TAP-PER in a quality table of its own (MAE: TAP-PER minus OPPU is -0.3)
    rerun3 = [row("TAP-PER", "mae", 0.4, [0.3, 0.5]),
              row("OPPU", "mae", 0.7, [0.5, 0.9], {"TAP-PER": paired(0.3, 0.1, 0.5, "mae")})]
    (results_dir / "quality_LaMP_3_oppu-rerun.json").write_text(json.dumps(quality_json("LaMP_3", "c", 69, rerun3)))
    out = tmp_path / "out"
    quality_summary.main(["--labels", "LaMP_2N,LaMP_3", "--results", str(results_dir), "--out", str(out),
                          "--rerun", "LaMP_2N:PPlug=pag_rerun_2n", "--rerun", "LaMP_3:OPPU=quality_LaMP_3_oppu-rerun"])
    data = json.loads((out / "quality_summary.json").read_text())
    board = {b["label"]: b for b in data["scoreboard"]}
    cell = board["LaMP_2N"]["cells"]["PPlug"]
    assert cell["verdict"] == "ahead" and cell["difference"] == 0.05 and cell["rerun"] == "pag_rerun_2n"
    assert cell["method"] == "PPlug (runs/new.json)" and board["LaMP_2N"]["counts"]["ahead"] == 3
    cell = board["LaMP_3"]["cells"]["OPPU"]
    assert cell["verdict"] == "ahead" and cell["difference"] == pytest.approx(-0.3)
    assert cell["ci95"] == pytest.approx([-0.5, -0.1])
    assert board["LaMP_3"]["counts"]["ahead, at the edge"] == 0  # the replaced cell no longer counts
    md = (out / "quality_summary.md").read_text()
    assert "ahead: +0.050 [+0.010, +0.090] (rerun: pag_rerun_2n)" in md
    assert "LaMP_2N, PPlug: the rerun in pag_rerun_2n.json (PPlug (runs/new.json)); the task table's cell was " \
           "tie +0.030." in md
    assert "the task table's cell was ahead, at the edge -0.210." in md
    # the per-task tables keep the table's own numbers
    assert data["tasks"][0]["rows"][3]["vs_tapper"]["difference"] == pytest.approx(-0.03)


def test_rag_fine_tuned_on_the_targets_fills_a_column_of_its_own_and_unrun_columns_are_left_out(
        results_dir: Path, tmp_path: Path):
    pairs = [{"a": "TAP-PER", "b": "RAG+targets (k=4, bm25, ...)", "difference": 0.01, "ci95": [-0.05, 0.07]},
             {"a": "TAP-PER", "b": "RAG (k=4, bm25, ...)", "difference": 0.1, "ci95": [0.05, 0.17]}]
    (results_dir / "rag_targets_2n.json").write_text(json.dumps({"task": "LaMP_2N", "pairs": pairs}))
    out = tmp_path / "out"
    quality_summary.main(["--labels", "LaMP_2N,LaMP_3", "--results", str(results_dir), "--out", str(out),
                          "--rerun", "LaMP_2N:RAG+targets=rag_targets_2n"])
    cells = {b["label"]: b for b in json.loads((out / "quality_summary.json").read_text())["scoreboard"]}
    cell = cells["LaMP_2N"]["cells"]["RAG+targets"]
    assert cell["verdict"] == "tie" and cell["difference"] == 0.01 and "RAG" not in cells["LaMP_2N"]["cells"]
    header = next(x for x in (out / "quality_summary.md").read_text().splitlines() if x.startswith("| task"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "RAG+targets" in columns and "OPPU" in columns  # each run on some task
    assert "RAG" not in columns and "PAG+targets" not in columns and "w/o P_u" not in columns  # run nowhere
    line = next(x for x in (out / "quality_summary.md").read_text().splitlines() if x.startswith("| LaMP_3"))
    assert len(line.strip("|").split("|")) == len(columns)


def test_the_scoreboard_figure_puts_tapper_s_advantage_right_of_zero_on_either_metric(results_dir: Path,
                                                                                        tmp_path: Path):
    out = tmp_path / "out"
    quality_summary.main(["--results", str(results_dir), "--out", str(out)])
    board = {b["label"]: b for b in json.loads((out / "quality_summary.json").read_text())["scoreboard"]}
    # accuracy: TAP-PER minus the control as it is
    assert quality_summary.advantage(board["LaMP_2N"]["cells"]["control"], True) == (
        pytest.approx(0.07), pytest.approx([0.031, 0.125]))
    # MAE: TAP-PER 0.21 below OPPU is an advantage of +0.21, its CI [-0.42, 0] turned to [0, +0.42]
    value, ci = quality_summary.advantage(board["LaMP_3"]["cells"]["OPPU"], board["LaMP_3"]["higher_better"])
    assert value == pytest.approx(0.21) and ci == pytest.approx([0.0, 0.42])
    assert quality_summary.advantage(board["LaMP_3"]["cells"]["PPlug"], False)[1] is None  # no paired CI
    assert quality_summary.board_columns(list(board.values())) == ["control", "OPPU", "PPlug", "best floor"]
    assert (out / "quality_summary_scoreboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "quality_summary_scoreboard.png" in (out / "quality_summary.md").read_text()


@pytest.mark.parametrize("rerun, message", [
    ("LaMP_2N=x", "expected LABEL:COLUMN=NAME"), ("LaMP_2N:Oracle=x", "no scoreboard column 'Oracle'"),
    ("LaMP_9:PAG=pag_rerun", "LaMP_9 is not one of the summarized labels"),
    ("LaMP_2N:RAG=pag_rerun", "pag_rerun.json: no RAG result paired with TAP-PER"),
    ("LaMP_2N:PAG=missing", "missing.json: no such results file"),
])
def test_a_bad_rerun_is_refused_with_what_is_wrong(results_dir: Path, tmp_path: Path, rerun: str, message: str):
    pairs = [{"a": "TAP-PER (a)", "b": "PAG (b)", "difference": 0.05, "ci95": [0.01, 0.09]}]
    (results_dir / "pag_rerun.json").write_text(json.dumps({"pairs": pairs}))
    with pytest.raises(SystemExit, match=message):
        quality_summary.main(["--labels", "LaMP_2N", "--results", str(results_dir), "--out", str(tmp_path / "o"),
                              "--rerun", rerun])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("diff, ci, higher, expected", [
    (0.07, [0.03, 0.12], True, "ahead"), (-0.07, [-0.12, -0.03], True, "behind"),
    (0.02, [-0.03, 0.07], True, "tie"), (0.06, [0.0, 0.13], True, "ahead, at the edge"),
    (-0.06, [-0.13, 0.0], True, "behind, at the edge"),
    (-0.14, [-0.26, -0.03], False, "ahead"), (0.19, [0.07, 0.32], False, "behind"),
    (-0.2, [-0.4, 0.0], False, "ahead, at the edge"), (0.0, [0.0, 0.0], False, "tie"),
    (0.3, None, True, "no paired CI"),
])
def test_verdict_reads_the_interval_in_the_metric_s_direction(diff, ci, higher, expected):
    assert verdict(diff, ci, higher) == expected


def test_the_seed_table_shows_each_spread_s_verdicts_and_pooled_difference(results_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    quality_summary.main(["--results", str(results_dir), "--out", str(out)])
    md = (out / "quality_summary.md").read_text()
    lines = [x for x in md.splitlines() if x.startswith("| LaMP_2N (LaMP_2N, 96, accuracy)")]
    # the control under the scoreboard's name, seeds in numeric order, verdicts strongest first, pooled with seeds
    assert lines[0].split(" | ")[1:] == ["control", "0, 1, 2", "2 ahead; 1 tie", "yes", "+0.065",
                                         "ahead, at the edge: +0.060 [+0.000, +0.120] (seeds 1, 2) |"]
    assert lines[1].split(" | ")[1:] == ["floor:most frequent", "0, 1, 2", "3 tie", "no", "-0.010", "- |"]
    rows = json.loads((out / "quality_summary.json").read_text())["over_seeds"]
    assert [r["opponent"] for r in rows] == ["control", "floor:most frequent"]
    assert rows[0]["pooled"]["ci95"] == [0.0, 0.12] and rows[1]["pooled"] is None
    # none asked for: no table
    quality_summary.main(["--results", str(results_dir), "--spreads", "", "--out", str(tmp_path / "none")])
    assert "Over training seeds" not in (tmp_path / "none" / "quality_summary.md").read_text()


def test_a_malformed_seed_spread_is_named_in_the_error(results_dir: Path):
    bad = seed_spread_json()
    del bad["gaps"]["nonpersonal"]["verdicts"]
    (results_dir / "seed_spread_LaMP_2N.json").write_text(json.dumps(bad))
    with pytest.raises(SummaryError, match=r"seed_spread_LaMP_2N.json: not a bench/seed_spread.py result.*verdicts"):
        summarize(["LaMP_2N"], results_dir)
    with pytest.raises(SummaryError, match="seed_spread_LaMP_9.json: no such seed spread"):
        summarize(["LaMP_2N"], results_dir, ["LaMP_9"])
