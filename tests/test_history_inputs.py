"""Rewritten history inputs: cached, used by the stage-2 builder in place of the template."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import tapper.history_inputs as hi
from tapper.data.records import LampSplit, ProfileItem, Question
from tapper.data.tasks import get_task
from tapper.examples import ExampleBuilder

TASK = get_task("LaMP_7")


def split() -> LampSplit:
    qs = []
    for u in range(2):
        profile = [ProfileItem(f"{u}_{j}", {"text": f"omg tweet {u} {j} lol"}, None, j) for j in range(4)]
        qs.append(Question(id=str(u), input=TASK.history_input(profile[0]), profile=profile, user_id=str(u)))
    return LampSplit("LaMP_7", qs, None)


def test_rewrites_are_cached_and_replace_the_template(tiny_backbone, tmp_path, monkeypatch):
    cache = tmp_path / "rewrites.json"
    monkeypatch.setattr(hi, "generate_batch", lambda model, tok, prompts, *a, **k: ["tweet said plainly lol"] *
                        len(prompts))
    inputs = hi.rewrite_history_inputs(tiny_backbone, TASK, split(), max_pairs=2, cache_path=cache)
    assert set(inputs) == {"0_2", "0_3", "1_2", "1_3"}  # each user's latest two records
    assert all(v.startswith("Paraphrase the following tweet") and "plainly" in v for v in inputs.values())
    assert cache.exists()

    def no_generation(*a, **k):
        raise AssertionError("cached rewrites must not be generated again")

    monkeypatch.setattr(hi, "generate_batch", no_generation)
    assert hi.rewrite_history_inputs(tiny_backbone, TASK, split(), max_pairs=2, cache_path=cache) == inputs

    builder = ExampleBuilder(TASK, tiny_backbone, top_k=2, history_inputs=inputs)
    exs = builder.from_history("0", split().questions[0].profile, max_pairs=2)
    assert [e.input for e in exs] == [inputs["0_2"], inputs["0_3"]]
    assert [e.answer for e in exs] == ["omg tweet 0 2 lol", "omg tweet 0 3 lol"]  # the user's own words


def test_failed_rewrites_are_rejected_and_older_records_replayed_instead(tiny_backbone, monkeypatch):
    def rewrite(model, tok, prompts, *a, **k):
        # record 3: a refusal; record 2: empty; record 1: a verbatim copy; record 0: a real rewrite
        return ["I'm sorry for the confusion, but I can help." if " 3 lol" in p else "" if " 2 lol" in p
                else re.search(r"omg tweet \d 1 lol", p).group(0) if " 1 lol" in p else "tweet zero said lol"
                for p in prompts]

    monkeypatch.setattr(hi, "generate_batch", rewrite)
    inputs = hi.rewrite_history_inputs(tiny_backbone, TASK, split(), max_pairs=2, candidates=4)
    assert set(inputs) == {"0_0", "1_0"}  # only the real rewrites pass the overlap filter
    builder = ExampleBuilder(TASK, tiny_backbone, top_k=2, history_inputs=inputs)
    exs = builder.from_history("0", split().questions[0].profile, max_pairs=2)
    assert [e.answer for e in exs] == ["omg tweet 0 0 lol"]  # records without a kept rewrite are not replayed


def test_history_records_without_an_answer_are_counted(tiny_backbone):
    lamp3 = get_task("LaMP_3")
    items = [ProfileItem("a", {"text": "fine", "score": "4"}, 1.0, 0), ProfileItem("b", {"text": "meh"}, 2.0, 1)]
    builder = ExampleBuilder(lamp3, tiny_backbone, top_k=1)
    assert len(builder.from_history("u", items)) == 1
    assert builder.skipped_history == 1


def test_a_killed_rewrite_run_keeps_the_rewrites_written_so_far(tiny_backbone, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "rewrites.json"
    monkeypatch.setattr(hi, "REWRITE_BATCHES_PER_SAVE", 1)
    calls = []

    def dies_on_the_second_batch(model, tok, prompts, *a, **k):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ["tweet said plainly lol"] * len(prompts)

    monkeypatch.setattr(hi, "generate_batch", dies_on_the_second_batch)
    try:
        hi.rewrite_history_inputs(tiny_backbone, TASK, split(), max_pairs=2, cache_path=cache, batch_size=2)
    except KeyboardInterrupt:
        pass
    assert len(json.loads(cache.read_text())) == 2  # the first batch survived the crash

    calls.clear()
    monkeypatch.setattr(hi, "generate_batch", lambda model, tok, prompts, *a, **k: calls.append(len(prompts)) or
                        ["tweet said plainly lol"] * len(prompts))
    monkeypatch.setattr("tapper.log_lines.live_progress", lambda: False)  # a background run's log file
    with caplog.at_level("INFO", logger="tapper"):
        inputs = hi.rewrite_history_inputs(tiny_backbone, TASK, split(), max_pairs=2, cache_path=cache, batch_size=2)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" s") and "written" in r.getMessage()]
    assert [p.split(",")[0] for p in progress] == [f"history rewrites: {n} of 6 written" for n in (2, 4, 6)]
    assert sum(calls) == 6  # 8 candidates (2 users x 4): only the 6 the killed run had not reached
    assert len(inputs) == 4 and len(json.loads(cache.read_text())) == 8


TWO_WRITERS = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import tapper.history_inputs as hi
    from tapper.backbone import tiny_backbone
    from tapper.data.records import LampSplit, ProfileItem, Question
    from tapper.data.tasks import get_task

    work, me = Path(sys.argv[1]), sys.argv[2]
    task = get_task("LaMP_7")
    qs = []
    for u in range(2):
        profile = [ProfileItem(f"{u}_{j}", {"text": f"omg tweet {u} {j} lol"}, None, j) for j in range(4)]
        qs.append(Question(id=str(u), input=task.history_input(profile[0]), profile=profile, user_id=str(u)))

    def slow_rewrite(model, tok, prompts, *a, **k):
        with open(work / "generated.txt", "a") as f:
            f.write(f"{me} {len(prompts)}\\n")
        time.sleep(0.3)
        return ["tweet said plainly lol"] * len(prompts)

    hi.generate_batch = slow_rewrite
    backbone = tiny_backbone(seed=0)
    (work / f"ready-{me}").touch()
    while not all((work / f"ready-{w}").exists() for w in "ab"):  # both start rewriting at the same time
        time.sleep(0.01)
    inputs = hi.rewrite_history_inputs(backbone, task, LampSplit("LaMP_7", qs, None), max_pairs=2,
                                       cache_path=work / "rewrites.json", batch_size=2)
    print(json.dumps(inputs, sort_keys=True))
""")


def test_two_processes_asking_for_the_same_rewrites_write_them_once(tmp_path: Path):
    procs = [subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(tmp_path), me], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for me in "ab"]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert outs[0][0].splitlines()[-1] == outs[1][0].splitlines()[-1]  # the same inputs in both
    batches = [line.split() for line in (tmp_path / "generated.txt").read_text().splitlines()]
    assert sum(int(n) for _, n in batches) == 8  # 2 users x 4 candidates, rewritten once in all
    assert len({who for who, _ in batches}) == 1  # by one process; the other waited and read them
    assert len(json.loads((tmp_path / "rewrites.json").read_text())) == 8
