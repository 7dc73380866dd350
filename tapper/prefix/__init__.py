"""TAP-PER's prefixes: P_u (user state) + P_q (temporal attentive query prefix), fused and prepended."""

from tapper.prefix.config import TapperConfig
from tapper.prefix.model import TapperModel, get_tapper_model
from tapper.prefix.query_prefix import QueryPrefix
from tapper.prefix.user_state import UserStateTable

__all__ = [
    "QueryPrefix", "TapperConfig", "TapperModel", "UserStateTable", "get_tapper_model",
]
