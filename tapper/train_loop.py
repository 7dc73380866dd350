"""The one training loop every method shares: seeded order, AdamW (RowAdam for per-user tables), warmup
and linear decay, clipping, progress with loss and tokens/s, and atomic checkpoints that a killed run
resumes from.

Checkpoints hold tensors in safetensors and everything else in JSON: nothing in a run directory is ever
unpickled, so a planted file cannot run code when a run resumes."""

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
from typing import TYPE_CHECKING, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from tapper.batching import answer_token_count
from tapper.io_utils import atomic_write_text, atomic_write_with
from tapper.precision import autocast, default_dtype, frozen_weights_in, resolve_dtype
from tapper.row_adam import RowAdam

if TYPE_CHECKING:
    from tapper.distributed import DataParallel

log = logging.getLogger(__name__)
ROW_SPARSE_OPTIMIZER = "RowAdam (per-row steps and moments), betas (0.9, 0.999)"  # recorded with results
T = TypeVar("T")
LossFn = Callable[[list[T]], tuple[torch.Tensor, int]]  # batch -> (mean loss, tokens it covered)

CKPT_PARAMS = "trainable.safetensors"
CKPT_OPTIM = "optimizer.safetensors"  # optimizer tensors; their structure and the RNG state are in CKPT_STATE
CKPT_STATE = "trainer_state.json"


@dataclass
class LoopConfig:
    lr: float = 3e-4
    epochs: float = 1.0  # fractional epochs allowed; max_steps wins when set
    max_steps: int | None = None
    batch_size: int = 8
    weight_decay: float = 0.0  # AdamW's, on the dense parameters (never on per-user rows)
    warmup_ratio: float = 0.0  # share of the steps over which the lr rises linearly from ~0
    decay: str = "constant"  # after warmup: "constant" or "linear" (to 0 at the last step)
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # 0: no checkpoints
    show_progress: bool = True
    # "fp32" | "bf16" | "auto" (tapper.precision): bf16 holds the frozen weights in bf16 and runs each forward
    # under autocast; the trained parameters and optimiser states stay float32.
    dtype: str | None = None  # None: tapper.precision.default_dtype(), "fp32" unless a command set it
    # Length-bucketed batches (batch_order): examples of similar length share a batch, so little is padding.
    bucket: bool = True
    bucket_window: int = 50  # batches per sorting window


@dataclass
class LoopResult:
    steps: int
    final_loss: float
    mean_loss: float
    tokens: int
    seconds: float  # this process's training time (tokens_per_second divides by it)
    resumed_from: int = 0
    earlier_seconds: float = 0.0  # training time behind the checkpoint it resumed from, spent by earlier processes

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# Training seconds this process kept from earlier ones: the time behind each checkpoint it resumed from (and
# behind any finished piece of work it reused, e.g. an OPPU user's adapter). A method timed with TrainingClock
# adds them back, so a run killed and resumed reports what its training cost in all, not its last process's share.
_kept_seconds = 0.0


def keep_earlier_seconds(seconds: float) -> None:
    """Count training time an earlier process spent on work this one reuses (see TrainingClock)."""
    global _kept_seconds
    _kept_seconds += max(0.0, float(seconds))


class TrainingClock:
    """Times a piece of training across resumes: `with TrainingClock() as clock: ...`, then clock.seconds is
    the wall time inside the block plus the earlier processes' seconds that the block kept."""

    seconds: float = 0.0

    def __enter__(self) -> TrainingClock:
        self._began, self._kept = time.perf_counter(), _kept_seconds
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._began + (_kept_seconds - self._kept)


def total_steps(n_examples: int, cfg: LoopConfig) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = max(1, -(-n_examples // cfg.batch_size))
    return max(1, round(per_epoch * cfg.epochs))


def lr_factor(step: int, steps: int, cfg: LoopConfig) -> float:
    """The learning-rate multiplier at a 0-based step: linear warmup, then constant or linear decay."""
    if cfg.decay not in ("constant", "linear"):
        raise ValueError(f"decay must be 'constant' or 'linear', not {cfg.decay!r}")
    warm = round(steps * cfg.warmup_ratio)
    if step < warm:
        return (step + 1) / (warm + 1)
    if cfg.decay == "linear":
        return max(0.0, (steps - step) / max(1, steps - warm))
    return 1.0


def batch_order(n_examples: int, steps: int, cfg: LoopConfig,
                lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Every step's example indices, fixed by the seed (and the examples' lengths) alone, so a resumed run
    sees the same batches.

    Without bucketing (cfg.bucket off, or no `lengths`): each epoch is a seeded shuffle, cut into batches that
    may run across an epoch's end. With bucketing: each epoch's shuffle is cut into windows of
    cfg.bucket_window batches, each window is sorted by length (ties keep the shuffled order) and cut into
    batches, and the epoch's batches are then shuffled, so examples of similar length share a batch and the
    order of lengths is still random. An epoch then ends with its one short batch (when n_examples is not a
    multiple of the batch size), so an epoch is still ceil(n / batch) steps."""
    rng = random.Random(cfg.seed)
    batches: list[list[int]] = []
    if cfg.bucket and lengths is not None:
        if len(lengths) != n_examples:
            raise ValueError(f"batch_order: {len(lengths)} lengths for {n_examples} examples")
        window = max(1, cfg.bucket_window) * cfg.batch_size
        while len(batches) < steps:
            epoch = list(range(n_examples))
            rng.shuffle(epoch)
            epoch_batches = []
            for start in range(0, n_examples, window):
                chunk = sorted(epoch[start:start + window], key=lambda i: lengths[i])  # windows hold whole batches
                epoch_batches += [chunk[j:j + cfg.batch_size] for j in range(0, len(chunk), cfg.batch_size)]
            rng.shuffle(epoch_batches)
            batches += epoch_batches
        return batches[:steps]
    order: list[int] = []
    for _ in range(steps):
        if len(order) < cfg.batch_size:
            epoch = list(range(n_examples))
            rng.shuffle(epoch)
            order += epoch
        batches.append(order[: cfg.batch_size])
        order = order[cfg.batch_size:]
    return batches


def example_length(example) -> int | None:
    """A cheap stand-in for an example's token count, for bucketing: the characters of its prompt and answer
    (tapper.examples.Example), or its own length for a sequence; None when neither applies."""
    prompt = getattr(example, "prompt", None)
    if isinstance(prompt, str):
        return len(prompt) + len(getattr(example, "answer", None) or "")
    if isinstance(example, (str, list, tuple)):
        return len(example)
    return None


def token_length(tokenizer, max_answer_tokens: int | None = None) -> Callable[[object], int | None]:
    """An Example's real token count (prompt + answer, the answer cut as training cuts it), for bucketing.
    Characters are a poor stand-in where the token/character ratio varies (LaMP-7's tweets: one epoch's
    batches 11.9% padding bucketed by characters, 1.4% by tokens; results/speed_precision.md)."""
    def count(example) -> int | None:
        prompt = getattr(example, "prompt", None)
        if not isinstance(prompt, str):
            return example_length(example)
        return (len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                + answer_token_count(tokenizer, getattr(example, "answer", None), max_answer_tokens))
    return count


def example_lengths(examples: Sequence, length: Callable[[object], int | None] | None = None) -> list[int] | None:
    """Every example's length (`length`, default example_length), or None when any is unknown."""
    measure = length or example_length
    out = []
    for e in examples:
        n = measure(e)
        if n is None:
            return None
        out.append(int(n))
    return out


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """The share of padding in the batches' rectangles (each batch padded to its longest example)."""
    real = padded = 0
    for b in batches:
        if not b:
            continue
        real += sum(lengths[i] for i in b)
        padded += max(lengths[i] for i in b) * len(b)
    return 1.0 - real / padded if padded else 0.0


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


def _flatten(obj, prefix: str, tensors: dict[str, torch.Tensor]):
    """obj with every tensor moved into `tensors` (replaced by its key): the rest is plain JSON."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state holds a {type(obj).__name__} at {prefix}: not JSON or a tensor")


def _unflatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"unexpected object in checkpoint state: {sorted(obj)}")
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _save_checkpoint(directory: Path, named: dict[str, nn.Parameter], optims: list[torch.optim.Optimizer],
                     schedules: list, step: int, losses: list[float], tokens: int, fingerprint: str,
                     seconds: float) -> None:
    tensors = {n: p.detach().cpu().contiguous() for n, p in named.items()}
    atomic_write_with(directory / CKPT_PARAMS, lambda p: save_file(tensors, str(p)))
    extra: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    layout = _flatten({"optimizers": [o.state_dict() for o in optims],
                       "schedules": [s.state_dict() for s in schedules]}, "opt", extra)
    atomic_write_with(directory / CKPT_OPTIM, lambda p: save_file(extra, str(p)))
    # The state file goes last: it names a step only once everything for that step is on disk.
    state = {"step": step, "losses": losses, "tokens": tokens, "fingerprint": fingerprint, "seconds": seconds,
             "optimizer_layout": layout, "rng_python": _flatten(random.getstate(), "py", {})}
    atomic_write_text(directory / CKPT_STATE, json.dumps(state) + "\n")


def _load_checkpoint(directory: Path, named: dict[str, nn.Parameter], optims: list[torch.optim.Optimizer],
                     schedules: list) -> dict:
    state = json.loads((directory / CKPT_STATE).read_text())
    tensors = load_file(str(directory / CKPT_PARAMS))
    missing = sorted(set(named) - set(tensors))
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks parameters {missing[:5]}")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(tensors[n].to(p.device))
    extra = load_file(str(directory / CKPT_OPTIM))
    kept = _unflatten(state["optimizer_layout"], extra)
    for opt, saved in zip(optims, kept["optimizers"], strict=True):
        opt.load_state_dict(saved)
    for schedule, saved in zip(schedules, kept["schedules"], strict=True):
        schedule.load_state_dict(saved)
    torch.set_rng_state(extra["rng.torch"])
    random.setstate(_unflatten(state["rng_python"], {}))
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
    parallel: DataParallel | None = None,
    length: Callable[[T], int | None] | None = None,
) -> LoopResult:
    """Optimise `params` (default: every trainable parameter of `module`) on `examples`.

    param_lrs maps id(param) -> its own learning rate (e.g. the user table learns faster than LoRA).
    row_sparse: tables whose rows each belong to one user and get gradient only when that user is in the
    batch. They train with RowAdam (tapper.row_adam): each row's steps and moments advance only on its own
    updates. Every group follows the same warmup and decay.

    length: an example's size for length-bucketed batches (cfg.bucket; default: example_length, the
    characters of an Example's prompt and answer; tapper's trainers pass token_length, the real count).
    cfg.dtype "bf16" (or "auto" on hardware with bf16) holds the module's frozen float32 weights in bf16 for
    the whole run (restored bit for bit afterwards) and runs each loss_fn under autocast; trained parameters,
    gradients and optimiser states stay float32.

    parallel (tapper.distributed.data_parallel): run on several processes, each taking its slice of every
    global batch; gradients are summed across them so that every process applies the same update."""
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    torch.manual_seed(cfg.seed)
    named = _trainable(module, params)
    if not named:
        raise ValueError(f"{desc}: nothing to train")
    sparse = {id(p) for p in row_sparse}
    dense: dict[float, list[nn.Parameter]] = {}
    rows: dict[float, list[nn.Parameter]] = {}
    for p in named.values():
        (rows if id(p) in sparse else dense).setdefault((param_lrs or {}).get(id(p), cfg.lr), []).append(p)
    optims: list[torch.optim.Optimizer] = []
    if dense:
        optims.append(torch.optim.AdamW([{"params": ps, "lr": lr} for lr, ps in dense.items()],
                                        weight_decay=cfg.weight_decay))
    if rows:
        optims.append(RowAdam([{"params": ps, "lr": lr} for lr, ps in rows.items()]))
    steps = total_steps(len(examples), cfg)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, steps, cfg)) for o in optims]
    batches = batch_order(len(examples), steps, cfg, example_lengths(examples, length) if cfg.bucket else None)
    device = next(iter(named.values())).device
    # "auto" weighs the model's size when the module holds the frozen model (not when it is a lone row)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    dtype = resolve_dtype(cfg.dtype or default_dtype(), device,
                          sum(p.numel() for p in module.parameters()) if frozen else None)
    if dtype != torch.float32:
        loss_fn = _under_autocast(loss_fn, dtype, device)

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    fingerprint = run_fingerprint(module, named, examples, cfg) if ckpt else ""
    start, losses, tokens, earlier = 0, [], 0, 0.0
    if ckpt and (ckpt / CKPT_STATE).exists():
        kept = json.loads((ckpt / CKPT_STATE).read_text()).get("fingerprint")
        if kept == fingerprint:
            state = _load_checkpoint(ckpt, named, optims, schedules)
            start, losses, tokens = state["step"], state["losses"], state["tokens"]
            earlier = float(state.get("seconds", 0.0))  # absent in checkpoints written before it was kept
            keep_earlier_seconds(earlier)
        else:
            # Another run's checkpoint (other examples, settings or starting weights, e.g. a new stage 1):
            # resuming from it would silently mix two trainings.
            log.warning("%s: %s belongs to another run (%s): starting afresh", desc, ckpt, kept or "no fingerprint")
            if parallel is not None:
                parallel.barrier()  # every rank has read the old state before rank 0 removes it
            if parallel is None or parallel.is_main:
                shutil.rmtree(ckpt)
    resumed_from = start
    if parallel is not None:
        parallel.start(named, cfg.seed, start)
        loss_fn = parallel.wrap(loss_fn)

    module.train()
    began = time.perf_counter()
    run_tokens = 0
    show = cfg.show_progress and (parallel is None or parallel.is_main)
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not show,
               dynamic_ncols=True, leave=False)
    with frozen_weights_in(module, dtype):  # float32 again on the way out, for merging and saving
        for step in bar:
            batch = [examples[i] for i in batches[step]]
            loss, n_tok = loss_fn(batch)
            for opt in optims:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if parallel is not None:  # the global gradient and loss, the same on every rank
                loss, n_tok = parallel.sync(named, sparse, loss, n_tok)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.max_grad_norm)
            for opt, schedule in zip(optims, schedules, strict=True):
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
                if parallel is None or parallel.is_main:
                    _save_checkpoint(ckpt, named, optims, schedules, step + 1, losses, tokens, fingerprint,
                                     earlier + elapsed)
                if parallel is not None:
                    parallel.barrier()
    bar.close()
    module.eval()
    seconds = time.perf_counter() - began
    tail = losses[-max(1, len(losses) // 10):]
    return LoopResult(
        steps=steps, final_loss=sum(tail) / len(tail), mean_loss=sum(losses) / max(1, len(losses)),
        tokens=run_tokens, seconds=seconds, resumed_from=resumed_from, earlier_seconds=earlier,
    )


def _under_autocast(loss_fn: LossFn, dtype: torch.dtype, device: torch.device) -> LossFn:
    def run(batch):
        with autocast(dtype, device):
            return loss_fn(batch)
    return run


def loop_config_dict(cfg: LoopConfig) -> dict:
    return asdict(cfg)
