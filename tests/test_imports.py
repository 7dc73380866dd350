"""Each entry module imports on its own in a fresh interpreter (an import cycle shows up only in some orders)."""

import subprocess
import sys

import pytest

ENTRY_MODULES = [
    "tapper.cli", "tapper.examples", "tapper.retrieval.context", "tapper.prefix", "tapper.engine",
    "tapper.train", "tapper.data.lamp_io", "tapper.experiment",
]


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_module_imports_alone(module):
    res = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
