"""PER-PCS: a target user's adapter is assembled from other users' LoRA pieces, without gradient steps.

Follows Tan et al. (2024), "Personalized Pieces: Efficient Personalized Large Language Models through
Collaborative Efforts", and its reference code (TamSiuhin/Per-Pcs: train_anchor_PEFT.py,
train_anchor_gate.py, lora_composition.py):

1. Sharers. A few non-target users (the `n_anchors` with the longest histories) each train a LoRA on
   their history pairs. A *piece* is one sharer's LoRA (A, B) in one adapted projection.
2. Gates. With its LoRA frozen, each sharer then trains one gate vector g per adapted projection
   (zero-initialised): the LoRA branch reads x * sigmoid(x . g) instead of x. The gate learns which
   hidden states that sharer's piece serves.
3. Assembly, per target user, with no gradient and no optimizer: the target's history pairs run through
   the model; at each adapted projection, in forward order, every sharer's piece is scored by
   layer_norm(x) . layer_norm(g) / sqrt(d), averaged over the positions that predict answer tokens and
   over the batch; the `top_k` best pieces are mixed with softmax(score / temperature) weights, their A
   and B matrices averaged with those weights, and that mixed piece already acts in the same forward pass
   (the next layers see it). The mixes of all of the user's batches are averaged.

What a target user keeps is one weight per (adapted projection, sharer): the mixed A and B are those
weighted sums, so a batch of many users runs in one pass, each row mixing its own user's weights.

Equal footing: the sharers' pairs come from the method's `builder`, so they carry the same replayed
inputs as every other method's history pairs (`builder.history_inputs`, e.g. the LaMP-7 rewrites; give
the sharers' rewrites too, see `build_anchors`), and a target's history pairs for assembly as well.

Departs from the reference in: the sharers' LoRAs follow OPPU's reference recipe (r=8, alpha=8 on q and
v, lr 1e-4, 2 epochs; the Per-Pcs code trains them at lr 2e-5 for 100 steps, on the attention
projections), because the pieces should be the same kind of adapter OPPU fits; the gates train at
`gate_lr` 1e-3 for `gate_epochs` (the reference: 2e-5 for 200 steps on a sharer's full history, which
here, with a handful of pairs, would leave the gates inside layer-norm's epsilon, where their direction
no longer sets the score); sharers are the users with the most history (the paper also tries other
selections); and every sharer is a candidate (the reference's `shared_ratio` 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.backbone import Backbone
from tapper.baselines.common import freeze, history_pairs_by_user, load_config, save_config
from tapper.baselines.oppu import USERS_DIR, OppuBaseline, OppuConfig, user_file_name, user_id_of
from tapper.batching import IGNORE, answer_loss, encode_train
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.experiment import copy_backbone
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_text, atomic_write_with
from tapper.train_loop import run_fingerprint, token_length, train

log = logging.getLogger(__name__)
ANCHORS_DIR = "anchors"
GATES_DIR = "gates"
ANCHORS_LIST = "anchors.json"  # written once every sharer's piece and gates exist: names the set that load() uses
GATE_STAMP_KEY = "tapper_gates"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class PerPcsConfig(OppuConfig):
    """The LoRA fields (r, alpha, targets, lr, epochs) are how the sharers' pieces are trained."""

    n_anchors: int = 6  # sharers
    top_k: int = 1  # pieces mixed per adapted projection per batch of a target's history (the reference's 1)
    temperature: float = 1.0  # of the softmax over the chosen pieces' scores
    gate_lr: float = 1e-3
    gate_epochs: float = 2.0


class PieceBank(nn.Module):
    """The state every PieceMixLinear reads in a forward pass.

    mode "off": the base projections alone; "mix": row r mixes the pieces with weights[r, module];
    "gate": sharer `anchor`'s piece alone, its input gated by `gates` (training a sharer's gates);
    "assemble": each projection scores the pieces on its input at the `select`ed positions, mixes the
    chosen ones and adds its weights to `assembled` (a target user's history going through)."""

    def __init__(self, n_modules: int, n_anchors: int):
        super().__init__()
        self.n_modules = n_modules
        self.n_anchors = n_anchors
        self.mode = "off"
        self.weights: torch.Tensor | None = None  # (B, modules, anchors) in "mix"
        self.anchor = 0
        self.gates: GateSet | None = None
        self.select: torch.Tensor | None = None  # (B, T) bool in "assemble"
        self.top_k = 1
        self.temperature = 1.0
        self.assembled: torch.Tensor | None = None  # (modules, anchors): sum of each batch's mixing weights


class GateSet(nn.Module):
    """One sharer's gate vectors, one per adapted projection (its input width), starting at zero."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.vectors = nn.ParameterList([nn.Parameter(torch.zeros(w)) for w in widths])


def piece_scores(x: torch.Tensor, select: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """(B, T, d) inputs of a projection, (B, T) positions to read, (anchors, d) gates -> (anchors,) scores:
    layer_norm(x) . layer_norm(g) / sqrt(d), the mean over each row's selected positions, then over rows."""
    d = x.shape[-1]
    h = F.layer_norm(x.float(), (d,))
    g = F.layer_norm(gates.float(), (d,))
    scores = torch.einsum("btd,ad->bta", h, g) / math.sqrt(d)
    m = select[..., None].to(scores.dtype)
    rows = select.any(dim=1)
    if not bool(rows.any()):
        raise ValueError("PER-PCS: no position to score the pieces on (no answer tokens in the batch)")
    per_row = (scores * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return per_row[rows].mean(dim=0)


def choose_pieces(scores: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """(anchors,) scores -> (anchors,) mixing weights: softmax(score / temperature) over the top_k, 0 elsewhere."""
    top = torch.topk(scores, min(top_k, scores.shape[-1]))
    out = torch.zeros_like(scores)
    return out.scatter(0, top.indices, torch.softmax(top.values / temperature, dim=-1))


class PieceMixLinear(nn.Module):
    """A frozen projection plus a mix of the sharers' pieces for it: (sum_a w_a B_a)(sum_a w_a A_a) x."""

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                 index: int, bank: PieceBank):
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", lora_a)  # (anchors, r, in)
        self.register_buffer("lora_b", lora_b)  # (anchors, out, r)
        self.register_buffer("gates", torch.zeros(lora_a.shape[0], lora_a.shape[2], dtype=lora_a.dtype,
                                                  device=lora_a.device))  # (anchors, in): the sharers' gates
        self.scale = scale
        self.index = index
        self.bank = [bank]  # in a list: the bank is shared, not a submodule of every projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        bank = self.bank[0]
        if bank.mode == "off":
            return out
        if bank.mode == "gate":
            g = bank.gates.vectors[self.index]
            xg = x * torch.sigmoid(x @ g.to(x.dtype))[..., None]
            a, b = self.lora_a[bank.anchor].to(x.dtype), self.lora_b[bank.anchor].to(x.dtype)
            return out + self.scale * (xg @ a.T) @ b.T
        if bank.mode == "assemble":
            w = choose_pieces(piece_scores(x, bank.select, self.gates), bank.top_k, bank.temperature)
            bank.assembled[self.index] += w
            weights = w[None].expand(x.shape[0], -1)
        else:
            weights = bank.weights[:, self.index]  # (B, anchors)
        weights = weights.to(x.dtype)
        a = torch.einsum("ba,ari->bri", weights, self.lora_a.to(x.dtype))
        b = torch.einsum("ba,aor->bor", weights, self.lora_b.to(x.dtype))
        h = torch.einsum("bti,bri->btr", x, a)
        return out + self.scale * torch.einsum("btr,bor->bto", h, b)


def _parse_piece_key(key: str) -> tuple[str, str]:
    """peft state-dict key -> (module path inside the HF model, "lora_A" | "lora_B")."""
    stem, kind, _ = key.rsplit(".", 2)
    return stem.removeprefix("base_model.model."), kind


def install_pieces(model: nn.Module, anchor_states: list[dict[str, torch.Tensor]], scale: float
                   ) -> tuple[PieceBank, list[str]]:
    """Replace every adapted projection of `model` by a PieceMixLinear holding all sharers' pieces.
    Returns the bank and the projections' paths in forward order (layer, then name)."""
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
    paths = sorted(modules, key=lambda p: (layers[p], p))
    bank = PieceBank(len(paths), len(anchor_states))
    for index, path in enumerate(paths):
        parts = modules[path]
        if len(parts["lora_A"]) != len(anchor_states) or len(parts["lora_B"]) != len(anchor_states):
            raise ValueError(f"PER-PCS: sharers disagree on the adapted modules (at {path})")
        parent_path, leaf = path.rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        base = getattr(parent, leaf)
        device = base.weight.device
        mixed = PieceMixLinear(base, torch.stack(parts["lora_A"]).to(device), torch.stack(parts["lora_B"]).to(device),
                               scale, index, bank)
        setattr(parent, leaf, mixed)
    return bank, paths


class PerPcsBaseline:
    name = "PER-PCS"

    def __init__(self, backbone: Backbone, config: PerPcsConfig, workdir: str | Path):
        """`backbone` (task-tuned) gets its projections replaced in place once the sharers exist; pass a copy.
        Sharers come from `build_anchors` (or `load`, which installs the set a saved run names)."""
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.workdir = Path(workdir)
        freeze(backbone)
        self.builder = ExampleBuilder(self.task, backbone, 0, "bm25", config.max_input_tokens)
        self.bank: PieceBank | None = None
        self.paths: list[str] = []
        self.layers: list[PieceMixLinear] = []
        self.anchors: list[str] = []
        self.user_mix: dict[str, torch.Tensor] = {}  # user -> (modules, anchors) mixing weights
        for path in sorted((self.workdir / USERS_DIR).glob("*.safetensors")):
            self.user_mix[user_id_of(path)] = load_file(str(path))["weights"]

    def anchor_file(self, user_id: str) -> Path:
        return self.workdir / ANCHORS_DIR / USERS_DIR / user_file_name(user_id)

    def gate_file(self, user_id: str) -> Path:
        return self.workdir / ANCHORS_DIR / GATES_DIR / user_file_name(user_id)

    @property
    def per_user_params(self) -> int:
        """Stored per target user: one mixing weight per (adapted projection, sharer); none of it trained."""
        if self.bank is None:
            return 0
        return self.bank.n_modules * self.bank.n_anchors

    # -- sharers: pieces and gates ----------------------------------------------------------------------

    def choose_anchors(self, anchor_split: LampSplit) -> LampSplit:
        """The n_anchors users of `anchor_split` with the longest histories (ties by id), as a split."""
        with_history = [q for q in anchor_split.questions if len(q.profile) > 0]
        by_length = sorted(with_history, key=lambda q: (-len(q.profile), q.user_id))
        chosen = set(list(dict.fromkeys(q.user_id for q in by_length))[: self.config.n_anchors])
        if not chosen:
            raise ValueError("PER-PCS: no user of the anchor split has any history to train a sharer on")
        return LampSplit(anchor_split.task, [q for q in anchor_split.questions if q.user_id in chosen])

    def build_anchors(self, anchor_split: LampSplit, history_inputs: dict[str, str] | None = None) -> list[str]:
        """Train the sharers (users other than the targets) chosen from `anchor_split`: each one's LoRA
        (OPPU's recipe), then its gates, and install their pieces. Their history pairs come from this
        method's builder, with `history_inputs` (the sharers' replayed inputs, e.g. LaMP-7 rewrites) added
        to the ones it holds. Resumable: a sharer's LoRA and gates made from the same start, recipe and
        pairs (their stamps) are kept, so a rerun retrains nothing that is still valid."""
        if self.bank is not None:
            return self.anchors
        if history_inputs:
            self.builder.history_inputs = {**(self.builder.history_inputs or {}), **history_inputs}
        picked = self.choose_anchors(anchor_split)
        pairs = history_pairs_by_user(self.builder, picked, self.config.max_history_pairs)
        trainer = OppuBaseline(copy_backbone(self.backbone), self.config, self.workdir / ANCHORS_DIR)
        trainer.builder = self.builder  # the same pairs, with the same replayed inputs, as every method
        trainer.fit(picked)
        del trainer
        anchors = sorted(u for u, ex in pairs.items() if ex and self.anchor_file(u).exists())
        if not anchors:
            raise ValueError(f"PER-PCS: none of the sharers {sorted(pairs)} has a usable history pair")
        self.install(anchors)
        for i, anchor in enumerate(anchors):
            self._gates_for(i, anchor, pairs[anchor])
        atomic_write_text(self.workdir / ANCHORS_DIR / ANCHORS_LIST, json.dumps(anchors, ensure_ascii=False) + "\n")
        return self.anchors

    def install(self, anchors: list[str]) -> None:
        missing = [a for a in anchors if not self.anchor_file(a).exists()]
        if missing:
            raise FileNotFoundError(f"PER-PCS: {self.workdir / ANCHORS_DIR} lacks the LoRA of sharer(s) {missing}")
        states = [load_file(str(self.anchor_file(a))) for a in anchors]
        self.anchors = list(anchors)
        self.bank, self.paths = install_pieces(self.backbone.model, states, self.config.alpha / self.config.r)
        by_path = {p: m for p, m in self.backbone.model.named_modules() if isinstance(m, PieceMixLinear)}
        self.layers = [by_path[p] for p in self.paths]

    def _gates_for(self, index: int, anchor: str, examples: list[Example]) -> None:
        """Sharer `index`'s gates: kept if made from the same piece, recipe and pairs, else trained."""
        bank = self._require_bank()
        cfg = self.config
        gates = GateSet([m.lora_a.shape[2] for m in self.layers]).to(self.backbone.device)
        loop = cfg.loop(cfg.gate_lr, cfg.gate_epochs)
        h = hashlib.sha256(self.anchor_file(anchor).read_bytes())
        h.update(json.dumps([self.paths, asdict(loop)], sort_keys=True).encode())
        h.update(run_fingerprint(gates, dict(gates.named_parameters()), examples, loop).encode())
        stamp = h.hexdigest()[:16]
        path = self.gate_file(anchor)
        if path.exists():
            with safe_open(str(path), framework="pt") as f:
                kept = (f.metadata() or {}).get(GATE_STAMP_KEY) == stamp
            if kept:
                self._set_gates(index, load_file(str(path)))
                return
        tok = self.backbone.tokenizer

        def loss_fn(batch: list[Example]) -> tuple[torch.Tensor, int]:
            return answer_loss(self.backbone.model, tok, [e.prompt for e in batch], [e.answer or "" for e in batch],
                               cfg.max_answer_tokens)

        bank.mode, bank.anchor, bank.gates = "gate", index, gates
        try:
            result = train(gates, examples, loss_fn, loop, desc=f"PER-PCS gates {anchor}",
                           length=token_length(tok, cfg.max_answer_tokens))
        finally:
            bank.mode, bank.gates = "off", None
        log.info("PER-PCS sharer %s: gates trained, %d steps, loss %.3f", anchor, result.steps, result.final_loss)
        tensors = {p: v.detach().cpu().contiguous() for p, v in zip(self.paths, gates.vectors, strict=True)}
        atomic_write_with(path, lambda p: save_file(tensors, str(p), metadata={GATE_STAMP_KEY: stamp}))
        self._set_gates(index, tensors)

    def _set_gates(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for path, layer in zip(self.paths, self.layers, strict=True):
                layer.gates[index] = tensors[path].to(layer.gates)

    # -- assembly per target user: no gradient, no optimizer ------------------------------------------------

    def fit(self, target: LampSplit) -> None:
        """Assemble every target user's adapter from the pieces (see `assemble`)."""
        self._require_bank()
        pairs = history_pairs_by_user(self.builder, target, self.config.max_history_pairs)
        for user_id, examples in pairs.items():
            if examples:
                self.user_mix[user_id] = self.assemble(examples)
                self.save_user(user_id)

    @torch.no_grad()
    def assemble(self, examples: list[Example]) -> torch.Tensor:
        """One user's (modules, anchors) mixing weights from that user's history pairs: per batch, each
        projection picks and weighs pieces by their gates' match with its input at the positions that predict
        the answer; the batches' weights are averaged. Forward passes only."""
        bank = self._require_bank()
        cfg = self.config
        tok = self.backbone.tokenizer
        device = self.backbone.device
        total = torch.zeros(bank.n_modules, bank.n_anchors, device=device)
        batches = [examples[i:i + cfg.batch_size] for i in range(0, len(examples), cfg.batch_size)]
        was_training = self.backbone.model.training
        self.backbone.model.eval()
        bank.mode, bank.top_k, bank.temperature = "assemble", cfg.top_k, cfg.temperature
        try:
            for batch in batches:
                enc = encode_train(tok, [e.prompt for e in batch], [e.answer or "" for e in batch],
                                   cfg.max_answer_tokens)
                labels = enc.labels.to(device)
                select = torch.zeros_like(labels, dtype=torch.bool)
                select[:, :-1] = labels[:, 1:] != IGNORE  # the positions whose next token is an answer token
                bank.select = select
                bank.assembled = torch.zeros(bank.n_modules, bank.n_anchors, device=device)
                self.backbone.model(input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device))
                total += bank.assembled
        finally:
            bank.mode, bank.select, bank.assembled = "off", None, None
            self.backbone.model.train(was_training)
        return (total / max(1, len(batches))).cpu()

    def save_user(self, user_id: str) -> Path:
        tensors = {"weights": self.user_mix[user_id].float().contiguous()}
        path = self.workdir / USERS_DIR / user_file_name(user_id)
        atomic_write_with(path, lambda p: save_file(tensors, str(p)))
        return path

    def _require_bank(self) -> PieceBank:
        if self.bank is None:
            raise RuntimeError("PER-PCS: no anchors yet (call build_anchors with other users' data first)")
        return self.bank

    # -- inference ----------------------------------------------------------------------------------------

    def user_weights(self, user_id: str) -> torch.Tensor:
        """(modules, anchors) mixing weights; a user never assembled gets the plain average of the sharers."""
        bank = self._require_bank()
        if user_id in self.user_mix:
            return self.user_mix[user_id]
        return torch.full((bank.n_modules, bank.n_anchors), 1.0 / bank.n_anchors)

    def question_examples(self, split: LampSplit) -> list[Example]:
        return [self.builder.for_question(q) for q in split.questions]

    def generate(self, examples: list[Example]) -> list[str]:
        """One pass for the whole batch, every row with its own user's assembled adapter."""
        bank = self._require_bank()
        bank.weights = torch.stack([self.user_weights(e.user_id) for e in examples]).to(self.backbone.device)
        bank.mode = "mix"
        try:
            return generate_batch(self.backbone.model, self.backbone.tokenizer, [e.prompt for e in examples], None,
                                  self.task.max_new_tokens, answers=self.config.answers(self.task))
        finally:
            bank.mode, bank.weights = "off", None

    # -- persistence ----------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_config(self.config, self.name, directory)
        if directory.resolve() != self.workdir.resolve():
            files = [f for a in self.anchors for f in (self.anchor_file(a), self.gate_file(a))]
            if self.anchors:
                files.append(self.workdir / ANCHORS_DIR / ANCHORS_LIST)
            for src in [*files, *sorted((self.workdir / USERS_DIR).glob("*.safetensors"))]:
                data = src.read_bytes()
                dest = directory / src.relative_to(self.workdir)
                atomic_write_with(dest, lambda p, d=data: p.write_bytes(d))

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone) -> PerPcsBaseline:
        """A saved run: its config, the sharers it names (pieces and gates) and its users' mixing weights."""
        directory = Path(directory)
        method = cls(backbone, load_config(PerPcsConfig, cls.name, directory), workdir=directory)
        listed = directory / ANCHORS_DIR / ANCHORS_LIST
        if listed.exists():
            anchors = json.loads(listed.read_text(encoding="utf-8"))
            method.install(anchors)
            for i, anchor in enumerate(anchors):
                method._set_gates(i, load_file(str(method.gate_file(anchor))))
        return method
