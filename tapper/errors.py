"""Errors that mean "you asked for something that cannot work", not "tapper has a bug".

The `tapper` command prints any of these as one `error: ...` line and exits with status 2 (no traceback;
TAPPER_DEBUG=1 shows one). Library callers catch them like the ValueErrors most of them also are."""

from __future__ import annotations


class TapperError(Exception):
    """A mistake the user can fix: its message says what was wrong and what to do instead."""


class BackboneMismatchError(TapperError, ValueError):
    """A saved run loaded onto a backbone other than the one it was trained on."""


class RunNotFoundError(TapperError, FileNotFoundError):
    """A path given as a run directory that holds no tapper run."""
