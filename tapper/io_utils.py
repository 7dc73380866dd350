"""Atomic file writes: a crash mid-write leaves the previous file intact. And one writer at a time for the
caches that several processes may fill at once."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def _umask_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's temp files are 0600). Read once at import:
    os.umask can only be read by setting it, which would race with other threads creating files."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` produce the file at a temp path (e.g. safetensors' save_file), then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_replace_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory next to `target`, then swap it in; the old one is removed only after the swap."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def one_writer(lock_path: Path, what: str) -> Iterator[None]:
    """Hold the file lock `lock_path` for the block. Two processes that would fill the same cache (two methods
    of one comparison run side by side) would otherwise both generate it; the second waits here, says so in
    its log, and then finds the first's work on disk."""
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process holds %s; waiting for it to finish", what, lock_path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def one_cache_writer(cache: Path | None, what: str) -> AbstractContextManager[None]:
    """one_writer for a cache file, its lock beside it (`<cache>.lock`); no lock for an in-memory cache (None)."""
    return nullcontext() if cache is None else one_writer(cache.with_name(f"{cache.name}.lock"), what)
