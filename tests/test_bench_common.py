"""bench/common.py: what every benchmark's result is stamped with."""

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402


def test_a_result_built_at_the_end_reports_the_scripts_wall_time(tmp_path, monkeypatch):
    # The benches build their Result after the work; the stamp must count the work, not the writing.
    monkeypatch.setattr(common, "SCRIPT_STARTED", time.time() - 125.0)
    result = common.Result("stamp_check", "a result made after 125 s of work", {"x": 1})
    json_path, md_path = result.write(tmp_path)[:2]
    assert json.loads(json_path.read_text())["wall_seconds"] >= 125.0
    assert "wall time 12" in md_path.read_text()
