"""The peers TAP-PER is measured against, on the same harness (examples, loop, generation, metrics).

Each module holds one method: a config dataclass (harness settings from the task's config, plus the
method's own knobs) and a class with fit / question_examples / generate / save / load; `run_baseline`
turns any of them into a `VariantResult` scored like TAP-PER. Heavy modules load on first access.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BaselineConfig": "common", "run_baseline": "common",
    "RagBaseline": "rag", "RagConfig": "rag",
    "PagBaseline": "pag", "PagConfig": "pag",
    "OppuBaseline": "oppu", "OppuConfig": "oppu",
    "PerPcsBaseline": "perpcs", "PerPcsConfig": "perpcs",
    "PPlugBaseline": "pplug", "PPlugConfig": "pplug",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tapper.baselines' has no attribute {name!r}")
    return getattr(import_module(f"tapper.baselines.{_EXPORTS[name]}"), name)
