"""Non-personalized baselines.

"Same budget" non-personalized = TAP-PER with both prefixes switched off: the same stage-1 task LoRA,
then the same LoRA (the bridge's shape) trained on the same target-user history pairs for the same
steps. The only thing it lacks is knowing who is asking, which is exactly what the comparison isolates.
"""

from __future__ import annotations

from dataclasses import replace

from tapper.prefix.config import TapperConfig


def nonpersonal_config(config: TapperConfig) -> TapperConfig:
    return replace(config, use_user_state=False, use_query_prefix=False, use_bridge=True)


def zero_shot_config(config: TapperConfig) -> TapperConfig:
    """The backbone as it is (no prefixes, no bridge); used with no stage-1 adapter either."""
    return replace(config, use_user_state=False, use_query_prefix=False, use_bridge=False)
