"""Numeric precision and CPU threads, decided in one place for every command that runs the model.

`dtype` choices (`--dtype`, `TrainConfig.dtype`):
- "fp32": everything in float32 (the reference);
- "bf16": the frozen backbone's weights held in bfloat16 while it runs, and its forward passes under bf16
  autocast. Every trained parameter (LoRA, P_q, the user table, anchors) keeps float32 master weights and
  float32 optimiser states; weights are merged and saved in float32;
- "auto": bf16 where the hardware has it (CUDA with bf16, a CPU with AVX512-BF16 or AMX), fp32 otherwise,
  and fp32 for models under 10M parameters (the `tiny` test backbone), which bf16 only slows down.

Why the weights and not autocast alone: autocast keeps its cast cache only for tensors that require grad, so
a frozen float32 weight is cast to bf16 again in every op of every step. On this project's 2-core Xeon
(AVX512-BF16 + AMX), results/speed_precision.md: a stage-2 training step ran 1.57x fp32 either way, onboarding
(one row) 1.9x fp32 with the weights in bf16, generation 1.42x.

Threads (`--threads`): 0 means "auto": torch's own default (one thread per core) for real models, but one
thread for a model of under 10M parameters (the `tiny` test backbone), whose ops are too small to split:
there, the threads' synchronisation costs more than the work (`tapper onboard` on the tiny model took
18.7 s with torch's default threads and 0.6 s with one, on a busy 2-core machine).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

DTYPE_CHOICES = ("auto", "fp32", "bf16")
SMALL_MODEL_PARAMS = 10_000_000  # below this, "auto" threads means one
_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX-BF16) and torch can use them."""
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        supported = False
    if not supported:
        return False
    # oneDNN also reports "supported" on plain AVX512 (emulated bf16: slower than fp32); ask for the real thing.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(choice: str | torch.dtype | None, device: str | torch.device = "cpu",
                  model_params: int | None = None) -> torch.dtype:
    """torch.float32 or torch.bfloat16 for a `dtype` choice ("auto", "fp32", "bf16"; None means "fp32").
    "auto" stays float32 for a model under SMALL_MODEL_PARAMS parameters (when `model_params` is known):
    there the casts cost more than the bf16 matmuls save (the tiny test model: 0.7x fp32's speed)."""
    if isinstance(choice, torch.dtype):
        if choice not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be float32 or bfloat16, not {choice}")
        return choice
    text = (choice or "fp32").strip().lower()
    if text == "auto":
        if model_params is not None and model_params < SMALL_MODEL_PARAMS:
            return torch.float32
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if kind == "cpu":
            return torch.bfloat16 if cpu_has_bf16() else torch.float32
        return torch.float32
    if text not in _NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, not {choice!r}")
    return _NAMES[text]


_PROCESS_DTYPE = ["fp32"]


def set_default_dtype(choice: str) -> None:
    """The dtype of training loops whose LoopConfig.dtype is None (the peers' loops): a command's --dtype."""
    resolve_dtype(choice)  # check it
    _PROCESS_DTYPE[0] = choice


def default_dtype() -> str:
    return _PROCESS_DTYPE[0]


def dtype_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast(dtype: torch.dtype, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on the device for dtype bf16; nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _frozen(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if not p.requires_grad and p.dtype == torch.float32]


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> int:
    """Hold every frozen float32 parameter of `module` in `dtype` from now on (for inference-only models:
    merge adapters *before* this, in float32). Trainable parameters are left alone. Returns how many
    parameters were cast."""
    if dtype == torch.float32:
        return 0
    frozen = _frozen(module)
    for p in frozen:
        p.data = p.data.to(dtype)
    return len(frozen)


@contextlib.contextmanager
def frozen_weights_in(module: nn.Module, dtype: torch.dtype) -> Iterator[int]:
    """Within the block, every frozen float32 parameter of `module` is held in `dtype`; on exit each gets its
    original float32 tensor back, bit for bit (training never changes a frozen weight), so what is merged or
    saved afterwards is float32. Yields how many parameters were cast."""
    if dtype == torch.float32:
        yield 0
        return
    frozen = _frozen(module)
    originals = [p.data for p in frozen]
    try:
        for p in frozen:
            p.data = p.data.to(dtype)
        yield len(frozen)
    finally:
        for p, original in zip(frozen, originals, strict=True):
            p.data = original


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's input embeddings are held in (what its frozen weights run in)."""
    get = getattr(model, "get_input_embeddings", None)
    if get is not None and get() is not None:
        return get().weight.dtype
    return next(model.parameters()).dtype


def run_context(model: nn.Module) -> contextlib.AbstractContextManager:
    """bf16 autocast when the model's weights are held in bf16 (its fp32 LoRA and prefixes then meet its
    weights in bf16 matmuls), nothing otherwise: what every forward of the backbone runs under."""
    dtype = weights_dtype(model)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    device = model.get_input_embeddings().weight.device if hasattr(model, "get_input_embeddings") else "cpu"
    return autocast(dtype, device)


# -- threads ---------------------------------------------------------------------------------------------

def resolve_threads(threads: int | None, model_params: int | None = None) -> int:
    """The intra-op thread count for `--threads`: a positive number as given; 0 / None ("auto"): one for a
    model under SMALL_MODEL_PARAMS parameters, torch's default otherwise."""
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be 0 (auto) or positive, not {threads}")
    if threads:
        return threads
    if model_params is not None and model_params < SMALL_MODEL_PARAMS:
        return 1
    return _default_threads()


@functools.cache
def _default_threads() -> int:
    return torch.get_num_threads()  # read before anything sets it: torch's own choice


_default_threads()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_threads(threads: int | None, model: nn.Module | None = None, model_params: int | None = None) -> int:
    """Apply `--threads` (see resolve_threads) for `model` (or a model of `model_params` parameters); returns
    the count now in use."""
    n_params = count_params(model) if model is not None else model_params
    n = resolve_threads(threads, n_params)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
