"""The one training loop every method shares: seeded order, AdamW, answer-token loss, progress with
loss and tokens/s, and atomic checkpoints that a killed run resumes from."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from tapper.io_utils import atomic_write_text, atomic_write_with

log = logging.getLogger(__name__)
ROW_SPARSE_BETAS = (0.0, 0.999)
ROW_SPARSE_OPTIMIZER = f"AdamW, betas {ROW_SPARSE_BETAS}"  # how row_sparse tables train (recorded with results)
T = TypeVar("T")
LossFn = Callable[[list[T]], tuple[torch.Tensor, int]]  # batch -> (mean loss, tokens it covered)

CKPT_PARAMS = "trainable.safetensors"
CKPT_OPTIM = "optimizer.pt"
CKPT_STATE = "trainer_state.json"


@dataclass
class LoopConfig:
    lr: float = 3e-4
    epochs: float = 1.0  # fractional epochs allowed; max_steps wins when set
    max_steps: int | None = None
    batch_size: int = 8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # 0: no checkpoints
    show_progress: bool = True


@dataclass
class LoopResult:
    steps: int
    final_loss: float
    mean_loss: float
    tokens: int
    seconds: float
    resumed_from: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def total_steps(n_examples: int, cfg: LoopConfig) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = max(1, -(-n_examples // cfg.batch_size))
    return max(1, round(per_epoch * cfg.epochs))


def batch_order(n_examples: int, steps: int, cfg: LoopConfig) -> list[list[int]]:
    """Every step's example indices, fixed by the seed alone (so a resumed run sees the same batches)."""
    rng = random.Random(cfg.seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        if len(order) < cfg.batch_size:
            epoch = list(range(n_examples))
            rng.shuffle(epoch)
            order += epoch
        batches.append(order[: cfg.batch_size])
        order = order[cfg.batch_size:]
    return batches


def _trainable(module: nn.Module, params: Sequence[nn.Parameter] | None) -> dict[str, nn.Parameter]:
    wanted = None if params is None else {id(p) for p in params}
    return {
        n: p for n, p in module.named_parameters()
        if p.requires_grad and (wanted is None or id(p) in wanted)
    }


def run_fingerprint(module: nn.Module, named: dict[str, nn.Parameter], examples: Sequence, cfg: LoopConfig) -> str:
    """What a checkpoint belongs to: the loop settings, the examples, and every weight as training starts
    (per-tensor sums: cheap, and enough to tell another stage-1 adapter or another initialisation apart)."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("show_progress", "checkpoint_every")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for e in examples:
        h.update(repr(e).encode())
    with torch.no_grad():
        for n, p in module.named_parameters():
            h.update(f"{n}{tuple(p.shape)}{n in named}{float(p.detach().double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def _save_checkpoint(directory: Path, named: dict[str, nn.Parameter], opt: torch.optim.Optimizer, schedule,
                     step: int, losses: list[float], tokens: int, fingerprint: str) -> None:
    tensors = {n: p.detach().cpu().contiguous() for n, p in named.items()}
    atomic_write_with(directory / CKPT_PARAMS, lambda p: save_file(tensors, str(p)))
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    atomic_write_with(directory / CKPT_OPTIM, lambda p: torch.save(
        {"optimizer": opt.state_dict(), "schedule": schedule.state_dict(), "rng": rng}, p))
    # The state file goes last: it names a step only once everything for that step is on disk.
    state = {"step": step, "losses": losses, "tokens": tokens, "fingerprint": fingerprint}
    atomic_write_text(directory / CKPT_STATE, json.dumps(state) + "\n")


def _load_checkpoint(directory: Path, named: dict[str, nn.Parameter], opt: torch.optim.Optimizer, schedule) -> dict:
    state = json.loads((directory / CKPT_STATE).read_text())
    tensors = load_file(str(directory / CKPT_PARAMS))
    missing = sorted(set(named) - set(tensors))
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks parameters {missing[:5]}")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(tensors[n].to(p.device))
    extra = torch.load(directory / CKPT_OPTIM, weights_only=False)
    opt.load_state_dict(extra["optimizer"])
    schedule.load_state_dict(extra["schedule"])
    torch.set_rng_state(extra["rng"]["torch"])
    random.setstate(extra["rng"]["python"])
    return state


def train(
    module: nn.Module,
    examples: Sequence[T],
    loss_fn: LossFn,
    cfg: LoopConfig,
    *,
    params: Sequence[nn.Parameter] | None = None,
    param_lrs: dict[int, float] | None = None,
    row_sparse: Sequence[nn.Parameter] = (),
    checkpoint_dir: str | Path | None = None,
    desc: str = "train",
    on_step: Callable[[int, int, float], None] | None = None,
) -> LoopResult:
    """Optimise `params` (default: every trainable parameter of `module`) on `examples`.

    param_lrs maps id(param) -> its own learning rate (e.g. the user table learns faster than LoRA).
    row_sparse: tables whose rows each belong to one user and get gradient only when that user is in the
    batch. They run without Adam's momentum (beta1 = 0): with it, a row would keep moving for ~10 steps after
    its user's batch, by its stale momentum, so every update counted about ten times over."""
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    torch.manual_seed(cfg.seed)
    named = _trainable(module, params)
    if not named:
        raise ValueError(f"{desc}: nothing to train")
    sparse = {id(p) for p in row_sparse}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in named.values():
        groups.setdefault(((param_lrs or {}).get(id(p), cfg.lr), id(p) in sparse), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": lr, **({"betas": ROW_SPARSE_BETAS} if rows else {})}
         for (lr, rows), ps in groups.items()],
        weight_decay=cfg.weight_decay,
    )
    steps = total_steps(len(examples), cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    batches = batch_order(len(examples), steps, cfg)

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    fingerprint = run_fingerprint(module, named, examples, cfg) if ckpt else ""
    start, losses, tokens = 0, [], 0
    if ckpt and (ckpt / CKPT_STATE).exists():
        kept = json.loads((ckpt / CKPT_STATE).read_text()).get("fingerprint")
        if kept == fingerprint:
            state = _load_checkpoint(ckpt, named, opt, schedule)
            start, losses, tokens = state["step"], state["losses"], state["tokens"]
        else:
            # Another run's checkpoint (other examples, settings or starting weights, e.g. a new stage 1):
            # resuming from it would silently mix two trainings.
            log.warning("%s: %s belongs to another run (%s): starting afresh", desc, ckpt, kept or "no fingerprint")
            shutil.rmtree(ckpt)
    resumed_from = start

    module.train()
    began = time.perf_counter()
    run_tokens = 0
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not cfg.show_progress,
               dynamic_ncols=True, leave=False)
    for step in bar:
        batch = [examples[i] for i in batches[step]]
        loss, n_tok = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.max_grad_norm)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        tokens += n_tok
        run_tokens += n_tok
        elapsed = time.perf_counter() - began
        bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{run_tokens / max(elapsed, 1e-9):.0f}")
        if on_step:
            on_step(step + 1, steps, losses[-1])
        if ckpt and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
            _save_checkpoint(ckpt, named, opt, schedule, step + 1, losses, tokens, fingerprint)
    bar.close()
    module.eval()
    seconds = time.perf_counter() - began
    tail = losses[-max(1, len(losses) // 10):]
    return LoopResult(
        steps=steps, final_loss=sum(tail) / len(tail), mean_loss=sum(losses) / max(1, len(losses)),
        tokens=run_tokens, seconds=seconds, resumed_from=resumed_from,
    )


def loop_config_dict(cfg: LoopConfig) -> dict:
    return asdict(cfg)
