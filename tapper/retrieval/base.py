from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import Protocol

from tapper.data.records import ProfileItem
from tapper.errors import TapperError

log = logging.getLogger(__name__)


class Retriever(Protocol):
    name: str

    def rank(self, query: str, docs: list[str], k: int) -> list[int]:
        """Indices of the k best docs for the query, best first (fewer if there are fewer docs)."""
        ...


class UnknownRetrieverError(TapperError, KeyError):
    """A retriever name that is neither registered here nor an importable 'package.module:Factory'."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, Callable[[], Retriever]] = {}
BUILTIN_MODULE = "tapper.retrieval."  # retrievers registered by tapper itself keep their short names


def register_retriever(name: str, factory: Callable[[], Retriever]) -> None:
    """Make `name` usable as TapperConfig.retriever in this process. A run saved with it names the factory by
    its import path (portable_retriever_name), so a process that never registered it still finds it; a factory
    defined in a script (__main__) or inside a function cannot be named that way: better pass its import path,
    'package.module:Factory', as the retriever directly."""
    _REGISTRY[name] = factory


def import_object(ref: str) -> object:
    """The object at 'package.module:attr' (or 'package.module.attr'), importing the module."""
    module_name, sep, attr = ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{ref!r} is not an import path ('package.module:attr')")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_retriever(name: str = "bm25") -> Retriever:
    """A fresh retriever: a registered name ('bm25', 'dense', 'rfmem', your own), or the import path of a
    factory taking no arguments (a class or function), e.g. 'my_package.retrievers:KeywordRetriever'."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if ":" in name or "." in name:
        try:
            factory = import_object(name)
        except (ImportError, AttributeError) as e:
            raise UnknownRetrieverError(f"retriever {name!r} cannot be imported here: {e}") from None
        if not callable(factory):
            raise UnknownRetrieverError(f"retriever {name!r} is a {type(factory).__name__}, not a class or function")
        return factory()
    raise UnknownRetrieverError(
        f"unknown retriever {name!r}; known: {', '.join(sorted(_REGISTRY))}. A retriever registered by "
        "register_retriever in another process is not known here: name it by import path instead "
        "(retriever='package.module:Factory'), which every process can resolve")


def import_path_of(factory: Callable[[], Retriever]) -> str | None:
    """'module:qualname' when that path leads back to `factory` from a fresh process; None otherwise."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    obj: object = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return f"{module}:{qualname}" if obj is factory else None


def portable_retriever_name(name: str) -> str:
    """What a saved run should record for the retriever `name`: tapper's own and import paths stay as they are;
    a name registered in this process becomes its factory's import path (with a warning when it has none)."""
    factory = _REGISTRY.get(name)
    if factory is None or getattr(factory, "__module__", "").startswith(BUILTIN_MODULE):
        return name
    path = import_path_of(factory)
    if path is None:
        log.warning("retriever %r (%r) has no import path (defined in a script or a function): a run saved with it "
                    "loads only where it is registered again; define it in a module and use 'module:Factory'",
                    name, factory)
        return name
    return path


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
