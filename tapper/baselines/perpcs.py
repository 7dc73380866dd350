"""PER-PCS: every target user's adapter is assembled from LoRA pieces of a few anchor users.

Anchors are trained exactly like OPPU users (one LoRA each, r=8 on q and v). A *piece* is one anchor's
LoRA in one layer. For a target user, per layer, a gate over the anchors is trained on the user's
history (LLM and pieces frozen); the top-p anchors of each layer are kept with their renormalised gate
weights. Only those selections (p indices + p weights per layer) are stored per target user.

The assembled update of a projection in layer l is  sum_a w[l, a] * scale * B_a A_a x : a LoRA of rank
(anchors * r) whose mixing weights are per row. So users differ only in a small weight tensor, and a
batch of mixed users runs in one pass (no adapter switching), and every user's gates can be trained
together in shuffled mixed batches: a user's gates only ever get gradient from that user's examples.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.backbone import Backbone
from tapper.baselines.common import freeze, history_pairs_by_user, load_config, save_config
from tapper.baselines.oppu import USERS_DIR, OppuBaseline, OppuConfig, user_file_name, user_id_of
from tapper.batching import answer_loss
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.experiment import copy_backbone
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_text, atomic_write_with
from tapper.train_loop import train

log = logging.getLogger(__name__)
ANCHORS_DIR = "anchors"
ANCHORS_LIST = "anchors.json"  # written once every anchor is trained: a half-built anchor set is never used
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class PerPcsConfig(OppuConfig):
    """The LoRA fields (r, alpha, targets, lr, epochs) are how the anchors are trained."""

    n_anchors: int = 6
    top_p: int = 2  # pieces kept per layer per target user
    gate_lr: float = 5e-2
    gate_epochs: float = 2.0


class PieceBank(nn.Module):
    """Per-row mixing weights, (B, layers, anchors), read by every PieceMixLinear in the forward pass."""

    def __init__(self, n_layers: int, n_anchors: int):
        super().__init__()
        self.n_layers = n_layers
        self.n_anchors = n_anchors
        self.weights: torch.Tensor | None = None  # set before each forward; None: no pieces at all


class PieceMixLinear(nn.Module):
    """A frozen projection plus the weighted sum of the anchors' LoRA pieces for its layer."""

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                 layer: int, bank: PieceBank):
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", lora_a)  # (anchors, r, in)
        self.register_buffer("lora_b", lora_b)  # (anchors, out, r)
        self.scale = scale
        self.layer = layer
        self.bank = [bank]  # in a list: the bank is shared, not a submodule of every layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        weights = self.bank[0].weights
        if weights is None:
            return out
        h = torch.einsum("bti,nri->btnr", x, self.lora_a.to(x.dtype))
        h = h * weights[:, None, self.layer, :, None].to(x.dtype)  # (B, 1, anchors, 1)
        return out + self.scale * torch.einsum("btnr,nor->bto", h, self.lora_b.to(x.dtype))


def _parse_piece_key(key: str) -> tuple[str, str]:
    """peft state-dict key -> (module path inside the HF model, "lora_A" | "lora_B")."""
    stem, kind, _ = key.rsplit(".", 2)
    return stem.removeprefix("base_model.model."), kind


def install_pieces(model: nn.Module, anchor_states: list[dict[str, torch.Tensor]], scale: float) -> PieceBank:
    """Replace every adapted projection of `model` by a PieceMixLinear holding all anchors' pieces."""
    modules: dict[str, dict[str, list[torch.Tensor]]] = {}
    for state in anchor_states:
        for key, tensor in state.items():
            path, kind = _parse_piece_key(key)
            modules.setdefault(path, {"lora_A": [], "lora_B": []})[kind].append(tensor)
    layers = {}
    for path in modules:
        found = _LAYER.search(f".{path}.")
        if found is None:
            raise ValueError(f"PER-PCS: cannot tell the layer of adapted module {path!r} (no '.layers.N.')")
        layers[path] = int(found.group(1))
    bank = PieceBank(max(layers.values()) + 1, len(anchor_states))
    for path, parts in modules.items():
        if len(parts["lora_A"]) != len(anchor_states) or len(parts["lora_B"]) != len(anchor_states):
            raise ValueError(f"PER-PCS: anchors disagree on the adapted modules (at {path})")
        parent_path, leaf = path.rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        base = getattr(parent, leaf)
        device = base.weight.device
        mixed = PieceMixLinear(base, torch.stack(parts["lora_A"]).to(device), torch.stack(parts["lora_B"]).to(device),
                               scale, layers[path], bank)
        setattr(parent, leaf, mixed)
    return bank


def select_pieces(logits: torch.Tensor, top_p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, anchors) gate logits -> (layers, p) anchor indices and their softmax-renormalised weights."""
    top = torch.topk(logits, min(top_p, logits.shape[-1]), dim=-1)
    return top.indices, torch.softmax(top.values, dim=-1)


def dense_weights(indices: torch.Tensor, weights: torch.Tensor, n_anchors: int) -> torch.Tensor:
    """(layers, p) selection -> (layers, anchors) mixing weights, zero outside the selection."""
    out = torch.zeros(indices.shape[0], n_anchors, dtype=weights.dtype)
    return out.scatter(1, indices.long(), weights)


class _GateTable(nn.Module):
    def __init__(self, n_users: int, n_layers: int, n_anchors: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_users, n_layers, n_anchors))  # start: uniform over anchors


class PerPcsBaseline:
    name = "PER-PCS"

    def __init__(self, backbone: Backbone, config: PerPcsConfig, workdir: str | Path):
        """`backbone` (task-tuned) gets its projections replaced in place once anchors exist; pass a copy."""
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.workdir = Path(workdir)
        freeze(backbone)
        self.builder = ExampleBuilder(self.task, backbone, 0, "bm25", config.max_input_tokens)
        self.bank: PieceBank | None = None
        self.anchors: list[str] = []
        self.selections: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        listed = self.workdir / ANCHORS_DIR / ANCHORS_LIST
        if listed.exists():
            self._install(json.loads(listed.read_text(encoding="utf-8")))
        for path in sorted((self.workdir / USERS_DIR).glob("*.safetensors")):
            tensors = load_file(str(path))
            self.selections[user_id_of(path)] = (tensors["indices"], tensors["weights"])

    def anchor_file(self, user_id: str) -> Path:
        return self.workdir / ANCHORS_DIR / USERS_DIR / user_file_name(user_id)

    @property
    def per_user_params(self) -> int:
        """Trainable per target user: one gate logit per (layer, anchor)."""
        if self.bank is None:
            return 0
        return self.bank.n_layers * self.bank.n_anchors

    # -- anchors --------------------------------------------------------------------------------------

    def build_anchors(self, anchor_split: LampSplit) -> list[str]:
        """Train OPPU LoRAs for the n_anchors users of `anchor_split` with the most history, then install
        their pieces. Anchors are other users than the targets (their adapters are shared). A workdir that
        already holds a complete anchor set keeps it (a resumed run does not retrain the anchors)."""
        if self.bank is not None:
            log.info("PER-PCS: reusing the %d anchors in %s", len(self.anchors), self.workdir / ANCHORS_DIR)
            return self.anchors
        with_history = [q for q in anchor_split.questions if len(q.profile) > 0]
        by_length = sorted(with_history, key=lambda q: (-len(q.profile), q.user_id))
        chosen = list(dict.fromkeys(q.user_id for q in by_length))[: self.config.n_anchors]
        if not chosen:
            raise ValueError("PER-PCS: no user of the anchor split has any history to train an anchor on")
        picked = LampSplit(anchor_split.task, [q for q in anchor_split.questions if q.user_id in set(chosen)])
        trainer = OppuBaseline(copy_backbone(self.backbone), self.config, self.workdir / ANCHORS_DIR)
        trainer.fit(picked)
        del trainer
        anchors = sorted(a for a in chosen if self.anchor_file(a).exists())  # users without pairs train nothing
        if not anchors:
            raise ValueError(f"PER-PCS: none of the anchor users {chosen} has a usable history pair")
        atomic_write_text(self.workdir / ANCHORS_DIR / ANCHORS_LIST, json.dumps(anchors, ensure_ascii=False) + "\n")
        self._install(anchors)
        return self.anchors

    def _install(self, anchors: list[str]) -> None:
        missing = [a for a in anchors if not self.anchor_file(a).exists()]
        if missing:
            raise FileNotFoundError(f"PER-PCS: {self.workdir / ANCHORS_DIR} lacks the adapter of anchor(s) {missing}")
        states = [load_file(str(self.anchor_file(a))) for a in anchors]
        self.anchors = list(anchors)
        self.bank = install_pieces(self.backbone.model, states, self.config.alpha / self.config.r)

    # -- gates per target user --------------------------------------------------------------------------

    def fit(self, target: LampSplit) -> None:
        pairs = history_pairs_by_user(self.builder, target, self.config.max_history_pairs)
        self.fit_gates(pairs)

    def fit_gates(self, pairs: dict[str, list[Example]]) -> None:
        """Train every listed user's gates (mixed-user batches), keep the top-p pieces per layer, save."""
        bank = self._require_bank()
        users = [u for u, ex in pairs.items() if ex]
        index = {u: i for i, u in enumerate(users)}
        gates = _GateTable(len(users), bank.n_layers, bank.n_anchors).to(self.backbone.device)
        examples = [e for u in users for e in pairs[u]]
        if not examples:
            return
        cfg = self.config
        tok = self.backbone.tokenizer

        def loss_fn(batch: list[Example]) -> tuple[torch.Tensor, int]:
            rows = torch.tensor([index[e.user_id] for e in batch], device=gates.logits.device)
            bank.weights = torch.softmax(gates.logits[rows], dim=-1)
            try:
                return answer_loss(self.backbone.model, tok, [e.prompt for e in batch],
                                   [e.answer or "" for e in batch], cfg.max_answer_tokens)
            finally:
                bank.weights = None

        train(gates, examples, loss_fn, cfg.loop(cfg.gate_lr, cfg.gate_epochs), desc="PER-PCS gates")
        for user_id in users:
            indices, weights = select_pieces(gates.logits[index[user_id]].detach().cpu(), cfg.top_p)
            self.selections[user_id] = (indices.to(torch.uint8), weights.float())
            self.save_user(user_id)

    def save_user(self, user_id: str) -> Path:
        indices, weights = self.selections[user_id]
        tensors = {"indices": indices.contiguous(), "weights": weights.contiguous()}
        path = self.workdir / USERS_DIR / user_file_name(user_id)
        atomic_write_with(path, lambda p: save_file(tensors, str(p)))
        return path

    def _require_bank(self) -> PieceBank:
        if self.bank is None:
            raise RuntimeError("PER-PCS: no anchors yet (call build_anchors with other users' data first)")
        return self.bank

    # -- inference ----------------------------------------------------------------------------------------

    def user_weights(self, user_id: str) -> torch.Tensor:
        """(layers, anchors) mixing weights; a user without gates gets the plain average of the anchors."""
        bank = self._require_bank()
        if user_id in self.selections:
            return dense_weights(*self.selections[user_id], bank.n_anchors)
        return torch.full((bank.n_layers, bank.n_anchors), 1.0 / bank.n_anchors)

    def question_examples(self, split: LampSplit) -> list[Example]:
        return [self.builder.for_question(q) for q in split.questions]

    def generate(self, examples: list[Example]) -> list[str]:
        """One pass for the whole batch, every row with its own user's assembled adapter."""
        bank = self._require_bank()
        bank.weights = torch.stack([self.user_weights(e.user_id) for e in examples]).to(self.backbone.device)
        try:
            return generate_batch(self.backbone.model, self.backbone.tokenizer, [e.prompt for e in examples], None,
                                  self.task.max_new_tokens, answers=self.config.answers(self.task))
        finally:
            bank.weights = None

    # -- persistence ----------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_config(self.config, self.name, directory)
        if directory.resolve() != self.workdir.resolve():
            anchor_files = [self.anchor_file(a) for a in self.anchors]
            if self.anchors:
                anchor_files.append(self.workdir / ANCHORS_DIR / ANCHORS_LIST)
            for src in [*anchor_files, *sorted((self.workdir / USERS_DIR).glob("*.safetensors"))]:
                data = src.read_bytes()
                dest = directory / src.relative_to(self.workdir)
                atomic_write_with(dest, lambda p, d=data: p.write_bytes(d))

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone) -> PerPcsBaseline:
        directory = Path(directory)
        return cls(backbone, load_config(PerPcsConfig, cls.name, directory), workdir=directory)
