"""Training and onboarding on N processes (`torchrun`), with torch.distributed's own collectives.

Launch any `tapper` command that trains under torchrun and it runs data-parallel:

    torchrun --standalone --nproc_per_node=2 -m tapper.cli train ...          # gloo on CPU
    torchrun --standalone --nproc_per_node=8 -m tapper.cli train --device cuda ...   # NCCL, one GPU a rank

`init()` reads torchrun's RANK, WORLD_SIZE and LOCAL_RANK (MASTER_ADDR/MASTER_PORT too) and starts the process
group: gloo on CPU, NCCL on CUDA (each rank on cuda:LOCAL_RANK). Without WORLD_SIZE > 1 nothing starts and
every function here answers as for one process, so the same code runs alone unchanged.

Stage 1 and stage 2 (`DataParallel`): every rank builds the same seeded `batch_order`, takes its slice of each
global batch, and after backward the trainable gradients are summed across ranks, so every rank applies the
same update and the weights never drift apart. The loss is TAP-PER's everywhere: the mean over the answer
tokens of the *global* batch. A rank's slice has T_r of the global T answer tokens; it backpropagates its
token *sum* (its mean x T_r), the sums are all-reduced together with T, and the gradient is divided by T:
exactly sum_r T_r * grad(mean_r) / T = grad(global mean), which is what one process computes (per-rank means
averaged, as DDP does, would weight a token by 1/T_r and differ whenever slices hold different answer lengths).
Clipping then sees the global gradient, identical on every rank.

The user table (row-sparse, trained by RowAdam) is not all-reduced densely: a rank's backward touches only its
users' rows, so each rank sends its non-zero rows (index + values) and every rank adds all of them into a
zero gradient. That is the dense sum without shipping the untouched rows (a stage-2 table of 100k users is
1.8 GB of float32 at d=576, L=8; a step touches batch_size rows). A user in two ranks' slices gets both
contributions added, as one process's index_select backward adds them; rows nobody touched stay exactly zero,
so RowAdam's "rows with a non-zero gradient" rule picks the same rows on every rank as in one process.

Why not DistributedDataParallel: DDP hooks the module's forward, and TAP-PER's loss is `TapperModel.loss`,
not a forward call; DDP averages gradients over ranks (a mean of per-rank means, not the token mean above);
it would all-reduce the whole user table every step; and the frozen backbone needs find_unused_parameters.
The trainable part is small (bridge/task LoRA, P_q: a few MB), so one flat all-reduce per step after backward
costs little and is exact; DDP's overlap of communication with backward would win nearly nothing here.

OPPU's per-user fits and onboarding are not data-parallel: each user is its own small fit, so users are
sharded across ranks (`mine`, `shard_of`), each rank fits and writes its own users, and rank 0 waits for all
at a barrier. Only rank 0 writes checkpoints and saved weights (atomic writes); the others wait at barriers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

import torch
from torch import nn

from tapper.batching import answer_token_count

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_RANK, ENV_WORLD, ENV_LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"
TIMEOUT = timedelta(minutes=60)  # a slow rank (stage 1 of a big model on CPU) must not time out a barrier


# -- the process group ----------------------------------------------------------------------------------

def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them; (0, 1, 0) when not launched by torchrun."""
    return (int(os.environ.get(ENV_RANK, 0)), int(os.environ.get(ENV_WORLD, 1)),
            int(os.environ.get(ENV_LOCAL_RANK, 0)))


def active() -> bool:
    """True inside a started process group of more than one process."""
    d = torch.distributed
    return d.is_available() and d.is_initialized() and d.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def init(device: str = "cpu") -> str:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1 (gloo for CPU, NCCL for CUDA;
    a no-op otherwise or when already started) and return this rank's device: `cuda` becomes
    cuda:LOCAL_RANK, so each rank of a node gets its own GPU."""
    rank_, world, local = env_world()
    if world > 1 and device.split(":")[0] == "cuda":
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend, timeout=TIMEOUT)
        log.info("rank %d/%d (%s) on %s", rank_, world, backend, device)
        if rank_ != 0:  # rank 0 tells the story; the others speak up only for warnings
            logging.getLogger("tapper").setLevel(logging.WARNING)
    return device


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -- sharding users -------------------------------------------------------------------------------------

def shard_of(user_id: str, shards: int) -> int:
    """A user's shard, stable across processes, machines and Python runs (sha256, not hash())."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """"i/N" -> (i, N); "auto" -> (RANK, WORLD_SIZE) from torchrun's environment ((0, 1) outside it)."""
    if text == "auto":
        rank_, world, _ = env_world()
        return rank_, world
    index, sep, total = text.partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be i/N with 0 <= i < N (e.g. 0/4) or 'auto', not {text!r}")
    return i, n


def mine(user_id: str) -> bool:
    """Whether this rank owns the user (always true for one process)."""
    return shard_of(user_id, world_size()) == rank() if active() else True


# -- data-parallel training -----------------------------------------------------------------------------

def answer_weight(tokenizer, max_answer_tokens: int) -> Callable[[Sequence], int]:
    """batch of Examples -> the answer tokens their loss averages over, as tapper.batching.encode_train counts
    them: each answer cut to max_answer_tokens, plus its eos."""
    def weight(batch: Sequence) -> int:
        return sum(answer_token_count(tokenizer, e.answer, max_answer_tokens) for e in batch)

    return weight


def local_slice(batch: Sequence[T], rank_: int, world: int) -> list[T]:
    """This rank's contiguous part of a global batch; part sizes differ by at most one (some may be empty)."""
    n = len(batch)
    start = rank_ * n // world
    return list(batch[start:(rank_ + 1) * n // world])


class DataParallel:
    """The loop's hooks for data-parallel training (see the module docstring): `wrap` the loss function,
    `start` once the weights are loaded, `sync` after backward."""

    def __init__(self, weight: Callable[[Sequence], int]):
        if not active():
            raise RuntimeError("DataParallel needs a started process group (tapper.distributed.init under torchrun)")
        self.weight = weight
        self.rank = rank()
        self.world = world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        torch.distributed.barrier()

    def wrap(self, loss_fn: Callable[[list[T]], tuple[torch.Tensor, int]]
             ) -> Callable[[list[T]], tuple[torch.Tensor, int]]:
        """loss_fn on this rank's slice, returned as the sum over its answer tokens (mean x T_r); `sync` turns
        it back into the global mean. An empty slice contributes a zero loss and zero gradients."""
        def local(batch: list[T]) -> tuple[torch.Tensor, int]:
            part = local_slice(batch, self.rank, self.world)
            self._answer_tokens = self.weight(part) if part else 0
            if not part:
                return torch.zeros((), requires_grad=True), 0
            loss, tokens = loss_fn(part)
            return loss * self._answer_tokens, tokens

        return local

    def start(self, named: dict[str, nn.Parameter], seed: int, step: int) -> None:
        """Rank 0's weights on every rank (as DDP does), then a per-rank RNG stream so that dropout masks
        differ between slices (fixed by seed, rank and step: a resumed run draws the same ones)."""
        with torch.no_grad():
            for p in named.values():
                torch.distributed.broadcast(p.data, src=0)
        torch.manual_seed(seed + 1_000_003 * self.rank + 7919 * step)

    def sync(self, named: dict[str, nn.Parameter], row_sparse: set[int], loss_sum: torch.Tensor, tokens: int
             ) -> tuple[torch.Tensor, int]:
        """Sum every trainable gradient over the ranks and divide by the global answer tokens; returns the
        global mean loss and the tokens every rank processed."""
        dense = [p for p in named.values() if id(p) not in row_sparse]
        tables = [p for p in named.values() if id(p) in row_sparse]
        device = next(iter(named.values())).device
        stats = torch.stack([loss_sum.detach().float().reshape(()).to(device),
                             torch.tensor(float(self._answer_tokens), device=device),
                             torch.tensor(float(tokens), device=device)])
        # One collective per step for the shared part and the counts (float32: exact for counts below 2^24).
        buffer = torch.cat([_grad(p).reshape(-1).float() for p in dense] + [stats])
        torch.distributed.all_reduce(buffer)
        flat, stats = buffer[:-3], buffer[-3:]
        total = max(float(stats[1]), 1.0)
        offset = 0
        for p in dense:
            n = p.numel()
            p.grad = (flat[offset:offset + n] / total).view_as(p).to(p.dtype)
            offset += n
        for p in tables:
            p.grad = self._sum_rows(p) / total
        return (stats[0] / total).float(), int(stats[2])

    def _sum_rows(self, p: nn.Parameter) -> torch.Tensor:
        """The dense sum over ranks of a row-sparse table's gradient, built from the rows each rank touched."""
        width = p.shape[-1]
        grad = _grad(p).reshape(-1, width)
        rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
        counts = [torch.zeros(1, dtype=torch.long, device=p.device) for _ in range(self.world)]
        torch.distributed.all_gather(counts, torch.tensor([rows.numel()], dtype=torch.long, device=p.device))
        most = max(int(c) for c in counts)
        out = torch.zeros_like(grad)
        if most == 0:
            return out.view_as(p)
        index = torch.zeros(most, dtype=torch.long, device=p.device)
        values = torch.zeros(most, width, dtype=grad.dtype, device=p.device)
        index[:rows.numel()] = rows
        values[:rows.numel()] = grad.index_select(0, rows)
        all_index = [torch.empty_like(index) for _ in range(self.world)]
        all_values = [torch.empty_like(values) for _ in range(self.world)]
        torch.distributed.all_gather(all_index, index)
        torch.distributed.all_gather(all_values, values)
        for r in range(self.world):  # rank by rank: a fixed order of addition, the same on every rank
            n = int(counts[r])
            out.index_add_(0, all_index[r][:n], all_values[r][:n])
        return out.view_as(p)


def _grad(p: nn.Parameter) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def data_parallel(weight: Callable[[Sequence], int]) -> DataParallel | None:
    """A DataParallel for the loop when running on several processes, else None (the loop runs alone)."""
    return DataParallel(weight) if active() else None
