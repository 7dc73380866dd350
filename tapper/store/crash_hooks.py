"""TEST-ONLY hooks that hold a write open halfway, so a test can kill the server at that exact point.

Environment variables (never set them in production; unset, these hooks do nothing):
- TAPPER_TEST_SLOW_WRITE_MS: at each marked point inside an append or a refresh transaction, sleep this long.
- TAPPER_TEST_PAUSE_MARKER: a file path; the hook creates it (with the point's name) just before sleeping,
  so the test knows the write is half done and can send SIGKILL.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause_midway(point: str) -> None:
    ms = os.environ.get("TAPPER_TEST_SLOW_WRITE_MS")
    if not ms:
        return
    marker = os.environ.get("TAPPER_TEST_PAUSE_MARKER")
    if marker:
        Path(marker).write_text(point)
    time.sleep(float(ms) / 1000.0)
