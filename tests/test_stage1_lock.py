"""Two processes that share a work dir (a comparison split by method, as bench/quality.py runs are) train stage 1
once: the second waits for the first's adapter and reuses it, instead of training it again into the same
checkpoint and log. The lock (`io_utils.one_writer`) also guards the LaMP-7 rewrites and PAG's summaries
(tests/test_history_inputs.py, tests/test_baselines.py), and a waiting process says so in its log."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

TRAIN_STAGE1 = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tapper.backbone import tiny_backbone
    from tapper.data.tasks import get_task
    from tapper.examples import Example
    from tapper.prefix import TapperConfig
    from tapper.train import TrainConfig, train_task_lora

    tcfg = TapperConfig(task="LaMP_4", backbone="tiny", max_answer_tokens=8)
    cfg = TrainConfig(batch_size=2, stage1_epochs=3.0, stage1_lr=1e-2, show_progress=False, dtype="fp32")
    examples = [Example(user_id=f"u{i}", query="", prompt=f"write a headline for article {i} " * 4, answer=f"title {i}")
                for i in range(8)]
    report = {}
    train_task_lora(tiny_backbone(seed=0), examples, tcfg, cfg, Path(sys.argv[1]), report)
    print(json.dumps({"status": report["status"]}))
""")


def test_two_processes_sharing_a_work_dir_train_stage1_once(tmp_path: Path):
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN_STAGE1, str(tmp_path / "stage1")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    statuses = sorted(json.loads(out.strip().splitlines()[-1])["status"] for out, _ in outs)
    assert statuses == ["reused", "trained"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "stage1" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and steps  # one trainer wrote the log


def test_a_second_writer_says_it_waits_and_goes_on_when_the_first_is_done(tmp_path: Path, caplog):
    import threading

    from filelock import FileLock

    from tapper.io_utils import one_writer

    lock_path = tmp_path / "cache.json.lock"
    held, release = threading.Event(), threading.Event()

    def first_writer() -> None:
        with FileLock(lock_path):
            held.set()
            release.wait(30)

    t = threading.Thread(target=first_writer)
    t.start()
    held.wait(30)
    threading.Timer(0.2, release.set).start()
    with caplog.at_level("INFO", logger="tapper"), one_writer(lock_path, "history rewrites"):
        assert release.is_set()  # entered only after the first writer let go
    t.join()
    assert [r.getMessage() for r in caplog.records] == [
        f"history rewrites: another process holds {lock_path}; waiting for it to finish"]
