"""The README's library snippet, run as written (on the tiny backbone instead of the bundled SmolLM2).

README.md's "As a library" block must be SNIPPET verbatim: change both together."""

from __future__ import annotations

import shutil

from tapper.data.sample import SAMPLE_DIR

SNIPPET = '''\
from tapper.data.lamp_io import read_split
from tapper.prefix import TapperModel
from tapper.train import builder_for, resolve_configs, train_tapper

tcfg, cfg = resolve_configs("LaMP_3", {"backbone": "default"}, {"stage2_epochs": 1})
other_users = read_split("data/lamp3/train_questions.json", "data/lamp3/train_outputs.json", task="LaMP_3")
target = read_split("data/lamp3/test_questions.json", task="LaMP_3")
model = train_tapper("runs/lamp3", other_users, target, tcfg, cfg)  # stage 1, then stage 2; resumable

model = TapperModel.from_pretrained("runs/lamp3")  # later, in any process: the folder is self-contained
builder = builder_for(model, model.config)
answers = model.generate([builder.for_question(q) for q in target.questions[:4]])
'''


def test_readme_library_snippet_runs(tmp_path, monkeypatch):
    data = tmp_path / "data" / "lamp3"
    data.mkdir(parents=True)
    for name in ("train_questions.json", "train_outputs.json", "test_questions.json"):
        shutil.copy(SAMPLE_DIR / name, data / name)
    monkeypatch.chdir(tmp_path)
    code = SNIPPET.replace('{"backbone": "default"}', '{"backbone": "tiny"}')
    assert code != SNIPPET
    # the sample has 32 users a split; fewer steps keep the test short without changing the snippet's calls
    code = code.replace('{"stage2_epochs": 1}', '{"stage2_epochs": 0.25, "stage1_epochs": 0.25}')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["answers"]) == 4 and all(isinstance(a, str) for a in namespace["answers"])
    assert (tmp_path / "runs" / "lamp3" / "task_adapter").is_dir()
    assert len(namespace["model"].user_state) == 32
