"""P_u rows as bytes: little-endian float32, with the row size stored beside them and checked on load."""

from __future__ import annotations

import numpy as np
import torch

from tapper.store.dialect import StoreError

ROW_DTYPE = np.dtype("<f4")


def encode_row(row: torch.Tensor | np.ndarray) -> tuple[bytes, int]:
    """(bytes, row size) of a 1-D row; a 2-D (L, d) prefix is flattened the same way the table stores it."""
    arr = row.detach().to("cpu", torch.float32).numpy() if isinstance(row, torch.Tensor) else np.asarray(row)
    arr = np.ascontiguousarray(arr.reshape(-1), dtype=ROW_DTYPE)
    if not np.isfinite(arr).all():
        raise StoreError("refusing to store a P_u row with NaN or infinite values")
    return arr.tobytes(), int(arr.size)


def decode_row(data: bytes, row_size: int, expected_size: int | None, what: str) -> torch.Tensor:
    """The stored row as a float32 tensor; `what` names the user in errors."""
    if expected_size is not None and row_size != expected_size:
        raise StoreError(
            f"P_u row of {what} has {row_size} numbers but this engine expects {expected_size}: "
            "the store was written for another run"
        )
    if len(data) != row_size * ROW_DTYPE.itemsize:
        raise StoreError(
            f"P_u row of {what} is {len(data)} bytes, expected {row_size} float32 values "
            f"({row_size * ROW_DTYPE.itemsize} bytes): the row is corrupt"
        )
    return torch.from_numpy(np.frombuffer(bytes(data), dtype=ROW_DTYPE).copy())
