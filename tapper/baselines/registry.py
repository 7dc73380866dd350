"""Building a peer by its CLI name (the CLI, `tapper compare` and the benchmarks).

The arrows run one way: the method modules import `tapper.baselines.common` (config base, persistence,
shared helpers), and this registry imports the method modules; common.py imports none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapper.backbone import Backbone
from tapper.baselines.common import Baseline

METHODS = ("rag", "pag", "oppu", "perpcs", "pplug")


def config_class(method: str) -> type:
    """The config dataclass of a method (its `--set` keys are that class's fields)."""
    from tapper.baselines.oppu import OppuConfig
    from tapper.baselines.pag import PagConfig
    from tapper.baselines.perpcs import PerPcsConfig
    from tapper.baselines.pplug import PPlugConfig
    from tapper.baselines.rag import RagConfig

    classes = {"rag": RagConfig, "pag": PagConfig, "oppu": OppuConfig, "perpcs": PerPcsConfig,
               "pplug": PPlugConfig}
    if method not in classes:
        raise KeyError(f"unknown baseline {method!r}; known: {', '.join(METHODS)}")
    return classes[method]


def make_baseline(method: str, backbone: Backbone, task: str, workdir: str | Path,
                  overrides: dict[str, Any] | None = None, summarizer: Backbone | None = None,
                  history_inputs: dict[str, str] | None = None) -> Baseline:
    """A baseline by CLI name on a task-tuned backbone. OPPU, PER-PCS and PPlug change the backbone in
    place (adapters, piece layers), so give each its own copy. `workdir` holds whatever the method
    writes while it works (adapters, the PAG summary cache). `history_inputs` replaces the replayed
    inputs of the history pairs a method trains on (see tapper.history_inputs), as for TAP-PER."""
    method_obj = _make(method, backbone, task, Path(workdir), dict(overrides or {}), summarizer)
    if history_inputs is not None and hasattr(method_obj, "builder"):
        method_obj.builder.history_inputs = dict(history_inputs)
    return method_obj


def _make(method: str, backbone: Backbone, task: str, workdir: Path, ov: dict[str, Any],
          summarizer: Backbone | None) -> Baseline:
    from tapper.baselines.oppu import OppuBaseline, OppuConfig
    from tapper.baselines.pag import SUMMARIES_NAME, PagBaseline, PagConfig
    from tapper.baselines.perpcs import PerPcsBaseline, PerPcsConfig
    from tapper.baselines.pplug import PPlugBaseline, PPlugConfig
    from tapper.baselines.rag import RagBaseline, RagConfig

    if method == "rag":
        return RagBaseline(backbone, RagConfig.for_task(task, **ov))
    if method == "pag":
        return PagBaseline(backbone, PagConfig.for_task(task, **ov), summarizer, cache_path=workdir / SUMMARIES_NAME)
    if method == "oppu":
        return OppuBaseline(backbone, OppuConfig.for_task(task, **ov), workdir)
    if method == "perpcs":
        return PerPcsBaseline(backbone, PerPcsConfig.for_task(task, **ov), workdir)
    if method == "pplug":
        return PPlugBaseline(backbone, PPlugConfig.for_task(task, **ov))
    raise KeyError(f"unknown baseline {method!r}; known: {', '.join(METHODS)}")
