"""Typed settings and the source hash.

- `parse_setting` / `parse_overrides`: `--set key=value` text turned into the value a config dataclass's field
  declares (its annotation, resolved when called, so a field added later is parsed by its own type):
  bool takes true/false, yes/no, on/off, 1/0 (any case); int, float (finite), str; `X | None` also takes
  none/null; lists and tuples take a JSON list or comma-separated items. Anything else is a `SettingError`
  (a ValueError) that names the key, the value and what the key takes.
- `check_settings`: the same check for values given in code or read from JSON (a bool field takes True or
  False, not "no"), with the same message.
- `source_hash`: one hash of every .py and .json file of the installed package, so that a result kept on
  disk can tell that the code that made it has changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NONE_WORDS = ("none", "null")


class SettingError(ValueError):
    """A setting whose key is unknown or whose value its field's type does not take."""


class _Rejected(Exception):
    """Internal: this value is not of this type."""


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved annotation} of a dataclass, read now (fields added later are included)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def describe(tp: Any, text: bool = True) -> str:
    """What a field of type `tp` takes, in words: as `--set` text (text=True) or as a Python value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is bool:
        if not text:
            return "a boolean (True or False)"
        return "a boolean (" + ", ".join(f"{t}/{f}" for t, f in zip(TRUE_WORDS, FALSE_WORDS, strict=True)) + ")"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "/".join(NONE_WORDS) if text else "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(tp):
        return " or ".join(describe(a, text) for a in args)
    if origin in (list, tuple):
        items = args[0] if args and (origin is list or len(args) == 1 or args[1:] == (Ellipsis,)) else Any
        how = " (a JSON list or comma-separated)" if text else ""
        return f"a list of {_plural(describe(items, text))}{how}"
    if origin is dict:
        return "a JSON object" if text else "a dict"
    return f"a {getattr(tp, '__name__', tp)}"


def parse_setting(cls: type, key: str, raw: str) -> Any:
    """The value of `cls`'s field `key` that the text `raw` stands for; SettingError if `key` is not a field
    or `raw` is not a value its type takes."""
    types_ = field_types(cls)
    if key not in types_:
        raise SettingError(f"unknown {cls.__name__} option {key!r}; known: {', '.join(sorted(types_))}")
    tp = types_[key]
    try:
        return _from_text(tp, raw)
    except _Rejected:
        raise SettingError(f"{key}={raw!r}: {cls.__name__}.{key} takes {describe(tp)}") from None


def check_settings(cls: type, values: Mapping[str, Any]) -> None:
    """SettingError unless every key is a field of `cls` and every value is of its field's type (given in
    code or read from JSON: no text coercion; an int is taken where a float is declared)."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise SettingError(f"unknown {cls.__name__} option(s): {unknown}")
    for key, value in values.items():
        if not _is_value(types_[key], value):
            raise SettingError(f"{key}={value!r}: {cls.__name__}.{key} takes {describe(types_[key], text=False)}")


def parse_overrides(items: Iterable[str] | None, classes: Sequence[type]) -> dict[str, Any]:
    """`key=value` texts -> {key: typed value}, each key parsed by the first of `classes` that has it as a
    field (a later item with the same key wins). SettingError for a malformed item, an unknown key or a value
    of the wrong type."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingError(f"--set expects key=value, got {item!r}")
        owner = next((cls for cls in classes if key in field_types(cls)), None)
        if owner is None:
            known = sorted({name for cls in classes for name in field_types(cls)})
            names = "/".join(cls.__name__ for cls in classes)
            raise SettingError(f"unknown option(s) [{key!r}]: not a field of {names}; known: {', '.join(known)}")
        out[key] = parse_setting(owner, key, raw)
    return out


def split_overrides(overrides: Mapping[str, Any], classes: Sequence[type]) -> tuple[dict[str, Any], ...]:
    """One dict per class with the overrides that are its fields; SettingError for a key none of them has."""
    names = [set(field_types(cls)) for cls in classes]
    unknown = sorted(set(overrides) - set().union(*names))
    if unknown:
        raise SettingError(f"unknown option(s) {unknown}")
    return tuple({k: v for k, v in overrides.items() if k in keys} for keys in names)


# -- text -> value ----------------------------------------------------------------------------------------

def _from_text(tp: Any, raw: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    word = raw.strip()
    if tp is Any:
        try:
            return json.loads(word)
        except json.JSONDecodeError:
            return raw
    if tp is bool:
        if word.lower() in TRUE_WORDS:
            return True
        if word.lower() in FALSE_WORDS:
            return False
        raise _Rejected
    if tp is int:
        try:
            return int(word)
        except ValueError:
            raise _Rejected from None
    if tp is float:
        try:
            value = float(word)
        except ValueError:
            raise _Rejected from None
        if not math.isfinite(value):
            raise _Rejected
        return value
    if tp is str:
        return raw
    if tp is type(None):
        if word.lower() in NONE_WORDS:
            return None
        raise _Rejected
    if origin is Literal:
        for option in args:
            try:
                value = _from_text(type(option), raw)
            except _Rejected:
                continue
            if value == option:
                return option
        raise _Rejected
    if _is_union(tp):
        # None first: "none" is None for `str | None`, not the text "none".
        for member in sorted(args, key=lambda a: a is not type(None)):
            try:
                return _from_text(member, raw)
            except _Rejected:
                continue
        raise _Rejected
    if origin in (list, tuple):
        items = _sequence_items(word, args[0] if args else Any)
        if origin is tuple:
            items = tuple(items)
        if not _is_value(tp, items):
            raise _Rejected
        return items
    if origin is dict or tp is dict:
        try:
            value = json.loads(word)
        except json.JSONDecodeError:
            raise _Rejected from None
        if not _is_value(tp, value):
            raise _Rejected
        return value
    if isinstance(tp, type):  # Path, an Enum (by value), ...
        try:
            return tp(raw)
        except (TypeError, ValueError):
            raise _Rejected from None
    raise _Rejected


def _sequence_items(word: str, item_type: Any) -> list[Any]:
    if word.startswith("["):
        try:
            value = json.loads(word)
        except json.JSONDecodeError:
            raise _Rejected from None
        if not isinstance(value, list):
            raise _Rejected
        return value
    parts = [p.strip() for p in word.split(",")]
    if any(not p for p in parts):  # "", "a,,b", "a,": an empty item is a typo, not a value
        raise _Rejected
    return [_from_text(item_type, p) for p in parts]


# -- value checks -----------------------------------------------------------------------------------------

def _is_value(tp: Any, value: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if tp is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if _is_union(tp):
        return any(_is_value(a, value) for a in args)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_is_value(a, v) for a, v in zip(args, value, strict=True))
        item_type = args[0] if args else Any
        return all(_is_value(item_type, v) for v in value)
    if origin is dict:
        key_type, value_type = args if args else (Any, Any)
        return isinstance(value, dict) and all(_is_value(key_type, k) and _is_value(value_type, v)
                                               for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this module does not know: not checked


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _plural(words: str) -> str:
    for single, many in (("a boolean", "booleans"), ("an integer", "integers"), ("a finite number", "numbers"),
                         ("a string", "strings")):
        if words.startswith(single):
            return many + words[len(single):]
    return words


# -- source hash ------------------------------------------------------------------------------------------

SOURCE_SUFFIXES = (".py", ".json")
PACKAGE_ROOT = Path(__file__).resolve().parent  # the installed tapper package


def source_hash(root: str | Path | None = None) -> str:
    """sha256 (first 16 hex digits) over the sorted relative paths and bytes of every .py and .json file
    under `root` (default: the installed `tapper` package, hashed once per process: the code that runs is
    the code loaded at its start). Caches (__pycache__) are not read, nor the parts that cannot change a
    quality result (NOT_RESULT_SOURCE: the HTTP service, its store, the command line), so that work on
    them does not throw away hours of kept training."""
    if root is None:
        return _package_source_hash()
    return _hash_tree(Path(root))


@cache
def _package_source_hash() -> str:
    return _hash_tree(PACKAGE_ROOT)


NOT_RESULT_SOURCE = ("serve", "store", "cli")  # top-level subpackages left out of the source hash


def _hash_tree(root: Path) -> str:
    if not root.is_dir():
        raise FileNotFoundError(f"source hash: {root} is not a directory")
    files = sorted(
        (p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
         and p.relative_to(root).parts[0] not in NOT_RESULT_SOURCE),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix().encode("utf-8")
        data = path.read_bytes()
        # lengths first: no two different trees give the same byte stream
        digest.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]
