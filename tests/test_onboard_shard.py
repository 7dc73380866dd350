"""Onboarding in shards: `tapper onboard --db --tenant --shard i/N` writes every user's row to one store exactly
once, the same rows as one process onboarding everyone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tapper.data.sample as sample_module
from tapper.cli import app
from tapper.data.lamp_io import read_split
from tapper.distributed import shard_of
from tapper.engine import TapperEngine
from tapper.onboard_shard import histories_by_user, onboard_shard
from tapper.store import UserStore
from tapper.train import init_run

QUESTIONS = Path(sample_module.__file__).parent / "sample" / "test_questions.json"
TENANT = "acme"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return init_run(tmp_path_factory.mktemp("run") / "run", backbone="tiny", task="LaMP_3")


def _users(n: int) -> list[str]:
    return sorted({q.user_id for q in read_split(QUESTIONS, task="LaMP_3").questions})[:n]


def _rows_and_jobs(url: str, users: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    store = UserStore(url)
    try:
        rows = {}
        for u in users:
            head = store.user_head(TENANT, u)
            assert head is not None, u
            version, row = store.load_row(head.uid)
            assert version == 1 and row is not None, (u, version)  # written once
            assert head.row_history_version == head.history_version  # fitted on the history now stored
            rows[u] = row
        with store.db.transaction(read_only=True) as cur:
            jobs = {u: (int(n), int(done)) for u, n, done in cur.execute(
                "SELECT user_id, COUNT(*), SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) FROM jobs "
                "GROUP BY user_id").all()}
        return rows, jobs
    finally:
        store.close()


def test_two_shards_write_every_user_once_with_the_rows_of_one_process(run, tmp_path):
    users = _users(8)
    assert {shard_of(u, 2) for u in users} == {0, 1}  # both shards have work
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    runner = CliRunner()
    base = ["onboard", "--run", str(run), "--questions", str(QUESTIONS), "--users", ",".join(users),
            "--steps", "2", "--db", url, "--tenant", TENANT]
    for shard in ("0/2", "1/2"):
        res = runner.invoke(app, [*base, "--shard", shard])
        assert res.exit_code == 0, res.output
        n = sum(shard_of(u, 2) == int(shard[0]) for u in users)
        assert f"shard {shard}: {n} user(s); fitted {n}," in res.output

    # One process, every user (shard 0/1), into its own store.
    split = read_split(QUESTIONS, task="LaMP_3")
    histories = {u: h for u, h in histories_by_user(split.questions).items() if u in users}
    alone_url = f"sqlite:///{tmp_path / 'alone.db'}"
    store = UserStore(alone_url)
    try:
        report = onboard_shard(TapperEngine.from_pretrained(run), store, TENANT, histories, (0, 1), steps=2)
    finally:
        store.close()
    assert sorted(report.fitted) == users

    sharded, jobs = _rows_and_jobs(url, users)
    alone, _ = _rows_and_jobs(alone_url, users)
    assert jobs == {u: (1, 1) for u in users}  # one job per user, done
    for u in users:
        # Each user's fit is its own seeded loop on its own history: the same numbers in any process.
        assert torch.equal(sharded[u], alone[u]), u
    assert len({tuple(r.tolist()) for r in sharded.values()}) == len(users)  # rows really are per user

    # A rerun of a shard fits nobody again: every user's row was fitted on its current history.
    res = runner.invoke(app, [*base, "--shard", "0/2"])
    assert res.exit_code == 0, res.output
    assert "fitted 0, already fitted" in res.output


def test_shard_needs_a_store(run):
    res = CliRunner().invoke(app, ["onboard", "--run", str(run), "--questions", str(QUESTIONS), "--shard", "0/2"])
    assert res.exit_code == 2
    assert "--db" in res.output
    res = CliRunner().invoke(app, ["onboard", "--run", str(run), "--questions", str(QUESTIONS), "--db",
                                   "sqlite:///x.db", "--tenant", "t", "--shard", "2/2"])
    assert res.exit_code == 2 and "--shard" in res.output
