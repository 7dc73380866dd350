"""`tapper data build` and `tapper data stats` through typer's CliRunner."""

from __future__ import annotations

import json

from fixtures_data import amazon_fixture, huffpost_fixture, lamp_questions, write_json
from typer.testing import CliRunner

from tapper.cli import app
from tapper.data.lamp_io import read_split

runner = CliRunner()


def test_build_writes_lamp_files_and_prints_a_summary(tmp_path):
    dump = amazon_fixture(tmp_path / "amazon.json")
    out = tmp_path / "lamp3"
    result = runner.invoke(app, ["data", "build", "amazon-lamp3", "--input", str(dump), "--out-dir", str(out),
                                 "--min-profile", "2"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 line(s): exact duplicate line" in result.stdout
    assert "test: 3 users, 3 questions" in result.stdout
    for name in ("train", "dev", "test"):
        split = read_split(out / f"{name}_questions.json", out / f"{name}_outputs.json")
        assert split.task == "LaMP_3" and len(split.questions) == 3


def test_build_user_split_with_options(tmp_path):
    dump = huffpost_fixture(tmp_path / "huff.json")
    out = tmp_path / "lamp2n"
    result = runner.invoke(app, ["data", "build", "huffpost-lamp2n", "--input", str(dump), "--out-dir", str(out),
                                 "--split", "user", "--seed", "4", "--min-profile", "1", "--max-users", "2"])
    assert result.exit_code == 0, result.output
    assert "categories outside LaMP-2N: comedy 1" in result.stdout
    assert "0 over max_users" not in result.stdout
    total = sum(len(read_split(out / f"{n}_questions.json", out / f"{n}_outputs.json").questions)
                for n in ("train", "dev", "test"))
    assert total == 2


def test_stats_prints_a_table_and_writes_json(tmp_path):
    questions = write_json(tmp_path / "q.json", lamp_questions(n_users=3, n_items=4))
    outputs = write_json(tmp_path / "o.json", {"task": "LaMP_3", "golds": [
        {"id": "100", "output": "5"}, {"id": "101", "output": "5"}, {"id": "102", "output": "2"}]})
    result = runner.invoke(app, ["data", "stats", str(questions), "--outputs", str(outputs),
                                 "--json", str(tmp_path / "stats.json")])
    assert result.exit_code == 0, result.output
    assert "profile_items" in result.stdout and "2: 1, 5: 2" in result.stdout
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["questions"] == 3 and stats["profile_items"] == 12 and stats["golds"]["labels"] == {"2": 1, "5": 2}


def test_bad_input_is_one_line_on_stderr_with_exit_code_2(tmp_path):
    records = lamp_questions()
    records[1]["profile"][0]["text"] = 5
    questions = write_json(tmp_path / "q.json", records)
    result = runner.invoke(app, ["data", "stats", str(questions)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(questions) in lines[0] and "record 1 (id '101')" in lines[0] and "field 'text'" in lines[0]


def test_bad_dump_and_missing_file(tmp_path):
    dump = tmp_path / "dump.json"
    dump.write_text('{"reviewerID": "a"}\n', encoding="utf-8")
    result = runner.invoke(app, ["data", "build", "amazon-lamp3", "--input", str(dump), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and f"{dump}: line 1, field 'unixReviewTime'" in result.stderr
    missing = runner.invoke(app, ["data", "stats", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "nope.json" in missing.stderr and "Traceback" not in missing.stderr
    unknown = runner.invoke(app, ["data", "stats", str(write_json(tmp_path / "q.json", lamp_questions())),
                                  "--task", "LaMP_99"])
    assert unknown.exit_code == 2 and "unknown task 'LaMP_99'" in unknown.stderr


def test_build_movielens_and_reddit_then_stats(tmp_path):
    from fixtures_sources import movielens_fixture, reddit_fixture

    folder = movielens_fixture(tmp_path / "ml")
    out = tmp_path / "lamp2"
    result = runner.invoke(app, ["data", "build", "movielens-lamp2", "--input", str(folder), "--out-dir", str(out),
                                 "--min-profile", "2"])
    assert result.exit_code == 0, result.output
    assert "labels renamed: based on book -> based on a book (1), scifi -> sci-fi (1)" in result.stdout
    assert "dropped 2 movies without a TMDB overview" in result.stdout
    assert "test: 2 users, 2 questions" in result.stdout
    split = read_split(out / "test_questions.json", out / "test_outputs.json")
    assert split.task == "LaMP_2" and sorted(split.golds.values()) == ["action", "classic"]
    stats = runner.invoke(app, ["data", "stats", str(out / "test_questions.json"), "--outputs",
                                str(out / "test_outputs.json"), "--json", str(tmp_path / "stats.json")])
    assert stats.exit_code == 0, stats.output
    numbers = json.loads((tmp_path / "stats.json").read_text())
    assert numbers["task"] == "LaMP_2" and numbers["golds"]["labels"] == {"action": 1, "classic": 1}
    assert numbers["profile_labels"]["tag"]["action"] == 3

    out = tmp_path / "lamp5r"
    result = runner.invoke(app, ["data", "build", "reddit-lamp5r", "--input", str(reddit_fixture(tmp_path / "r.jsonl")),
                                 "--out-dir", str(out), "--split", "user", "--min-profile", "2"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 line(s): post body under 5 words" in result.stdout
    parts = [read_split(out / f"{n}_questions.json", out / f"{n}_outputs.json") for n in ("train", "dev", "test")]
    assert {p.task for p in parts} == {"LaMP_5R"} and sum(len(p.questions) for p in parts) == 2


def test_build_movielens_without_its_files_is_one_line_on_stderr(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["data", "build", "movielens-lamp2", "--input", str(tmp_path / "empty"),
                                 "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hetrec_user_taggedmovies-timestamps.dat" in lines[0]
    assert not (tmp_path / "out").exists()
