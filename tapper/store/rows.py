"""P_u rows as bytes, with the row size stored beside them and checked on load. Two formats, told apart by
their length (a row of n numbers):

- float32: n little-endian float32 values (4n bytes), exact;
- int8: n int8 values then one little-endian float32 scale (n + 4 bytes), row ~= q * scale with
  scale = max|row| / 127: the user table's int8 format (tapper.prefix.user_state.quantize_rows_int8), a quarter
  of the bytes for a rounding error of at most scale / 2 per number.

A store writes new rows in its configured format (UserStore(row_format=...), `tapper serve --row-format`) and
reads either, so switching a store to int8 keeps its float32 rows readable until they are refitted.
"""

from __future__ import annotations

import numpy as np
import torch

from tapper.store.dialect import StoreError

ROW_DTYPE = np.dtype("<f4")
SCALE_DTYPE = np.dtype("<f4")
ROW_FORMATS = ("float32", "int8")


def encode_row(row: torch.Tensor | np.ndarray, row_format: str = "float32") -> tuple[bytes, int]:
    """(bytes, row size) of a 1-D row; a 2-D (L, d) prefix is flattened the same way the table stores it."""
    if row_format not in ROW_FORMATS:
        raise ValueError(f"unknown row format {row_format!r}; known: {', '.join(ROW_FORMATS)}")
    arr = row.detach().to("cpu", torch.float32).numpy() if isinstance(row, torch.Tensor) else np.asarray(row)
    arr = np.ascontiguousarray(arr.reshape(-1), dtype=ROW_DTYPE)
    if not np.isfinite(arr).all():
        raise StoreError("refusing to store a P_u row with NaN or infinite values")
    if row_format == "float32":
        return arr.tobytes(), int(arr.size)
    from tapper.prefix.user_state import quantize_rows_int8

    q, scale = quantize_rows_int8(torch.from_numpy(arr.copy())[None, :])
    scale_bytes = np.asarray([float(scale[0])], dtype=SCALE_DTYPE).tobytes()
    return q[0].numpy().astype(np.int8).tobytes() + scale_bytes, int(arr.size)


def row_format_of(data: bytes, row_size: int) -> str | None:
    """"float32" or "int8" by the length of the stored bytes; None when it is neither (a corrupt row)."""
    if len(data) == row_size * ROW_DTYPE.itemsize:
        return "float32"
    if len(data) == row_size + SCALE_DTYPE.itemsize:
        return "int8"
    return None


def decode_row(data: bytes, row_size: int, expected_size: int | None, what: str) -> torch.Tensor:
    """The stored row as a float32 tensor (int8 rows dequantized); `what` names the user in errors."""
    if expected_size is not None and row_size != expected_size:
        raise StoreError(
            f"P_u row of {what} has {row_size} numbers but this engine expects {expected_size}: "
            "the store was written for another run"
        )
    data = bytes(data)
    kind = row_format_of(data, row_size)
    if kind == "float32":
        return torch.from_numpy(np.frombuffer(data, dtype=ROW_DTYPE).copy())
    if kind == "int8":
        q = np.frombuffer(data, dtype=np.int8, count=row_size).astype(np.float32)
        scale = np.frombuffer(data, dtype=SCALE_DTYPE, offset=row_size, count=1)[0]
        if not np.isfinite(scale):
            raise StoreError(f"int8 P_u row of {what} has a non-finite scale: the row is corrupt")
        return torch.from_numpy(q * np.float32(scale))
    raise StoreError(
        f"P_u row of {what} is {len(data)} bytes, expected {row_size} float32 values "
        f"({row_size * ROW_DTYPE.itemsize} bytes) or {row_size} int8 values and a scale "
        f"({row_size + SCALE_DTYPE.itemsize} bytes): the row is corrupt"
    )
