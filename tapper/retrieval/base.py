from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tapper.data.records import ProfileItem


class Retriever(Protocol):
    name: str

    def rank(self, query: str, docs: list[str], k: int) -> list[int]:
        """Indices of the k best docs for the query, best first (fewer if there are fewer docs)."""
        ...


_REGISTRY: dict[str, Callable[[], Retriever]] = {}


def register_retriever(name: str, factory: Callable[[], Retriever]) -> None:
    _REGISTRY[name] = factory


def get_retriever(name: str = "bm25") -> Retriever:
    if name not in _REGISTRY:
        raise KeyError(f"unknown retriever {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def select_before(
    query: str,
    history: list[ProfileItem],
    end: int,
    k: int,
    key: Callable[[ProfileItem], str],
    retriever: Retriever,
) -> list[int]:
    """Indices (into `history`) of the top-k records among history[:end], best first."""
    if end <= 0 or k <= 0:
        return []
    return retriever.rank(query, [key(item) for item in history[:end]], k)
