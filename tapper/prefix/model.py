"""TapperModel: a frozen causal LM + bridge LoRA, reading P = P_u + P_q prepended to its input embeddings."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.backbone import Backbone, backbone_identity, describe_identity, load_backbone
from tapper.batching import answer_loss
from tapper.data.tasks import get_task
from tapper.errors import BackboneMismatchError, RunNotFoundError
from tapper.examples import Example
from tapper.generate import generate_batch
from tapper.io_utils import atomic_replace_dir, atomic_write_text, atomic_write_with
from tapper.lora import add_lora
from tapper.prefix.config import TapperConfig
from tapper.prefix.query_prefix import QueryPrefix
from tapper.prefix.user_state import UserStateTable
from tapper.retrieval.base import portable_retriever_name

log = logging.getLogger(__name__)

CONFIG_NAME = "tapper_config.json"
TRAIN_CONFIG_NAME = "train_config.json"  # how it was trained (tapper.train.TrainConfig); onboarding reads it
BACKBONE_NAME = "backbone.json"  # which backbone it was trained on (tapper.backbone.backbone_identity)
QUERY_PREFIX_NAME = "query_prefix.safetensors"
TASK_ADAPTER_DIR = "task_adapter"
BRIDGE_DIR = "bridge"
USER_STATE_DIR = "user_state"
ANCHOR_KEY = "prefix_anchor"  # stored with P_q's weights: both are shared, trained in stage 2
# Kept on the transformers model object by whoever merges a task LoRA into it (merge_task_adapter,
# tapper.train.train_task_lora): the adapter's saved files, so that any TapperModel built on that backbone (or a
# deep copy of it) saves them again and its folder reloads to the same weights.
_TASK_ADAPTER_ATTR = "_tapper_task_adapter_files"


class TapperModel(nn.Module):
    def __init__(self, backbone: Backbone, config: TapperConfig, user_ids: list[str] | None = None):
        super().__init__()
        self.config = config
        self.task = get_task(config.task)
        self.tokenizer = backbone.tokenizer
        self.backbone_name = backbone.name
        # Before any LoRA goes in: the weights this model reads (see tapper.backbone.backbone_identity).
        self.backbone_identity: dict[str, Any] = backbone_identity(backbone)
        self.task_adapter_files: dict[str, bytes] | None = task_adapter_files(backbone)
        self.train_config: dict[str, Any] | None = None  # tapper.train.TrainConfig as a dict, saved beside
        self.train_summary: dict[str, Any] | None = None  # what tapper.train.train_tapper did, when it made this
        hidden = backbone.hidden_size
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        self.lm: nn.Module = backbone.model
        if config.use_bridge:
            self.lm = add_lora(
                backbone.model, config.bridge_r, config.bridge_alpha, config.bridge_dropout, config.lora_targets
            )
        self.hidden = hidden
        self.user_state = UserStateTable(config.prefix_len * hidden, user_ids or [], config.init_std)
        self.query_prefix = QueryPrefix(hidden, config.prefix_len, config.use_time_decay, config.use_order_decay)
        self.prefix_anchor = None
        if config.anchor_text and (config.use_user_state or config.use_query_prefix):
            self.prefix_anchor = nn.Parameter(anchor_embeddings(backbone, config.anchor_text, config.prefix_len))
        self.to(backbone.device)

    # -- the pieces -------------------------------------------------------------------------------

    @property
    def hf_model(self) -> nn.Module:
        """The transformers model (bridge LoRA layers, if any, live inside it)."""
        return self.lm.get_base_model() if isinstance(self.lm, PeftModel) else self.lm

    @property
    def device(self) -> torch.device:
        return self.user_state.weight.device

    @property
    def row_size(self) -> int:
        return self.user_state.row_size

    def embed_mean(self, texts: list[str]) -> torch.Tensor:
        """(N, d) mean of the backbone's input token embeddings: the record encoder needs no extra model."""
        emb = self.hf_model.get_input_embeddings()
        if not texts:
            return torch.zeros(0, self.hidden, device=self.device)
        enc = self.tokenizer(
            # the texts come cut to their budgets (tapper.examples); this only bounds a caller's own text
            texts, add_special_tokens=False, truncation=True,
            max_length=max(self.config.max_query_tokens, self.config.max_record_tokens),
            padding=True, return_tensors="pt",
        ).to(self.device)
        mask = enc["attention_mask"].unsqueeze(-1).to(emb.weight.dtype)
        with torch.no_grad():
            vecs = emb(enc["input_ids"])
        return (vecs * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def build_prefix(
        self, examples: list[Example], user_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, L, d) fused prefix P = P_u + P_q, and P_q's (B, k) attention weights.

        user_rows overrides the table (serving and onboarding pass rows in); otherwise rows come from the
        table, with the mean row for users it does not know."""
        cfg = self.config
        b, length = len(examples), cfg.prefix_len
        if not (cfg.use_user_state or cfg.use_query_prefix):
            return None, None
        prefix = torch.zeros(b, length, self.hidden, device=self.device)
        if self.prefix_anchor is not None:
            prefix = prefix + self.prefix_anchor
        if cfg.use_user_state:
            rows = user_rows if user_rows is not None else self.user_state.rows([e.user_id for e in examples])
            prefix = prefix + rows.to(self.device).view(b, length, self.hidden)
        weights = None
        if cfg.use_query_prefix:
            q_prefix, weights = self._query_prefix(examples)
            prefix = prefix + q_prefix
            if not cfg.use_user_state:
                # Without P_u, a row with no records would be all zeros, and exact-zero input vectors give NaN
                # gradients in SmolLM2 (seen in the no-P_u ablation on LaMP-3). Such a row reads P_q's
                # projection of an empty pool instead (its bias): a learned "no history" prefix.
                empty = torch.tensor([not e.context.record_ids for e in examples], device=self.device)
                no_history = self.query_prefix.proj.bias.view(1, length, self.hidden)
                prefix = torch.where(empty[:, None, None], prefix + no_history, prefix)
        return prefix, weights

    def _query_prefix(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        k = max(1, max(len(e.context.record_ids) for e in examples))
        b, dev = len(examples), self.device
        z_query = self.embed_mean([e.query for e in examples])
        flat = [t for e in examples for t in e.context.record_texts]
        z_flat = self.embed_mean(flat)
        z_records = torch.zeros(b, k, self.hidden, device=dev)
        mask = torch.zeros(b, k, dtype=torch.bool, device=dev)
        days = torch.full((b, k), math.nan, device=dev)
        steps = torch.zeros(b, k, device=dev)
        start = 0
        for r, e in enumerate(examples):
            n = len(e.context.record_ids)
            if n:
                z_records[r, :n] = z_flat[start:start + n]
                mask[r, :n] = True
                days[r, :n] = torch.tensor(e.context.days_back, device=dev)
                steps[r, :n] = torch.tensor(e.context.steps_back, device=dev)
            start += n
        return self.query_prefix(z_query, z_records, mask, days, steps)

    # -- training and inference -------------------------------------------------------------------

    def loss(self, examples: list[Example], user_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over answer tokens only (prompt and prefix positions are ignored)."""
        prefix, _ = self.build_prefix(examples, user_rows)
        return answer_loss(
            self.lm, self.tokenizer, [e.prompt for e in examples], [e.answer or "" for e in examples],
            self.config.max_answer_tokens, prefix,
        )

    @torch.no_grad()
    def generate(
        self,
        examples: list[Example],
        user_rows: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        stop_at_newline: bool = True,
    ) -> list[str]:
        """Raw greedy text for every example in one batch, each row with its own user's prefix."""
        was_training = self.training
        self.eval()  # LoRA dropout off: greedy output must not depend on the batch it ran in
        try:
            prefix, _ = self.build_prefix(examples, user_rows)
            return generate_batch(
                self.hf_model, self.tokenizer, [e.prompt for e in examples], prefix,
                max_new_tokens or self.task.max_new_tokens, stop_at_newline,
                answers=self.task.labels if self.config.constrain_answers else None,
            )
        finally:
            self.train(was_training)

    def shared_parameters(self) -> list[nn.Parameter]:
        """What stage 2 trains besides the user table: P_q and the bridge."""
        params = list(self.query_prefix.parameters())
        if self.prefix_anchor is not None:
            params.append(self.prefix_anchor)
        params += [p for n, p in self.lm.named_parameters() if "lora_" in n]
        return params

    # -- persistence: shared part and user table are saved apart -----------------------------------

    def save_pretrained(self, directory: str | Path, int8_user_state: bool = False) -> None:
        """Write a self-contained run folder that `from_pretrained` rebuilds to the same weights, anywhere:

            tapper_config.json  train_config.json  backbone.json (which backbone, checked on load)
            task_adapter/ (the merged stage-1 LoRA)  bridge/  query_prefix.safetensors  user_state/

        Only the backbone itself is not copied: backbone.json names it (a spec or an absolute path) and
        holds a digest of its weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        portable_config(self.config).save(directory / CONFIG_NAME)
        if self.train_config is not None:
            atomic_write_text(directory / TRAIN_CONFIG_NAME,
                              json.dumps(self.train_config, indent=2, sort_keys=True) + "\n")
        atomic_write_text(directory / BACKBONE_NAME, json.dumps(self.backbone_identity, indent=2) + "\n")
        adapter_dir = directory / TASK_ADAPTER_DIR
        if self.task_adapter_files is not None:
            if read_dir_files(adapter_dir) != self.task_adapter_files:
                atomic_replace_dir(adapter_dir, lambda tmp: write_dir_files(tmp, self.task_adapter_files))
        elif adapter_dir.exists():
            # This model's backbone has no task LoRA merged in: a leftover adapter would be merged on reload.
            log.warning("%s: removing a task adapter this model was not built with", adapter_dir)
            shutil.rmtree(adapter_dir)
        state = {k: v.detach().cpu().contiguous() for k, v in self.query_prefix.state_dict().items()}
        if self.prefix_anchor is not None:
            state[ANCHOR_KEY] = self.prefix_anchor.detach().cpu().contiguous()
        atomic_write_with(directory / QUERY_PREFIX_NAME, lambda p: save_file(state, str(p)))
        if isinstance(self.lm, PeftModel):
            atomic_replace_dir(directory / BRIDGE_DIR, lambda tmp: self.lm.save_pretrained(str(tmp)))
        self.save_user_state(directory, int8=int8_user_state)

    def save_user_state(self, directory: str | Path, int8: bool = False) -> None:
        self.user_state.save_pretrained(Path(directory) / USER_STATE_DIR, int8=int8)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str = "cpu",
        backbone: Backbone | str | None = None,
        allow_other_backbone: bool = False,
    ) -> TapperModel:
        """Rebuild a saved run: backbone (+ merged task LoRA), bridge, P_q, user table.

        backbone: the model the run was trained on, when the recorded one cannot be loaded here (a model
        passed in as an object, a folder that moved, another machine): a Backbone or a load_backbone spec.
        It must be the same model: its weights' digest is checked against backbone.json, and a mismatch
        is a BackboneMismatchError naming both, unless allow_other_backbone=True (then a warning). A
        backbone of another shape (width, layers, vocabulary) is always refused."""
        directory = Path(directory)
        config = load_run_config(directory)
        saved = read_backbone_identity(directory)
        if backbone is None:
            backbone = load_recorded_backbone(directory, config, saved, device)
        elif isinstance(backbone, str):
            backbone = load_backbone(backbone, device=device)
        check_backbone(directory, saved, backbone, allow_other_backbone)
        identity = backbone_identity(backbone)  # before the task LoRA goes in
        merged_already, on_disk = task_adapter_files(backbone), read_dir_files(directory / TASK_ADAPTER_DIR)
        if merged_already is None:
            backbone = merge_task_adapter(backbone, directory / TASK_ADAPTER_DIR)
        elif on_disk is not None and merged_already != on_disk:
            raise BackboneMismatchError(
                f"the backbone given to load {directory} already has another task LoRA merged in than the "
                f"run's {TASK_ADAPTER_DIR}/: pass the backbone without it")
        # else: the caller's backbone already holds this run's task LoRA (or the run has none): used as is
        bridge_dir = directory / BRIDGE_DIR
        model = cls(backbone, replace(config, use_bridge=False))
        model.config = config
        model.backbone_identity = identity
        train_cfg = directory / TRAIN_CONFIG_NAME
        if train_cfg.is_file():
            model.train_config = json.loads(train_cfg.read_text(encoding="utf-8"))
        if config.use_bridge:
            model.lm = PeftModel.from_pretrained(backbone.model, str(bridge_dir), is_trainable=True)
            for n, p in model.lm.named_parameters():
                p.requires_grad_("lora_" in n)
        state = load_file(str(directory / QUERY_PREFIX_NAME))
        anchor = state.pop(ANCHOR_KEY, None)
        if (anchor is None) != (model.prefix_anchor is None):
            raise ValueError(f"{directory / QUERY_PREFIX_NAME}: anchor_text in {CONFIG_NAME} is "
                             f"{config.anchor_text!r} but the file {'lacks' if anchor is None else 'has'} "
                             f"the '{ANCHOR_KEY}' tensor")
        if anchor is not None:
            model.prefix_anchor.data.copy_(anchor)
        model.query_prefix.load_state_dict(state)
        if (directory / USER_STATE_DIR).exists():
            model.user_state = UserStateTable.from_pretrained(directory / USER_STATE_DIR)
        return model.to(backbone.device)


# -- a saved run's pieces ---------------------------------------------------------------------------------

def load_run_config(directory: Path) -> TapperConfig:
    """The run's TapperConfig; a RunNotFoundError when `directory` is not a saved run."""
    if not (directory / CONFIG_NAME).is_file():
        what = "does not exist" if not directory.exists() else f"holds no {CONFIG_NAME}"
        raise RunNotFoundError(f"{directory} is not a tapper run: it {what} (make one with `tapper train`)")
    return TapperConfig.load(directory / CONFIG_NAME)


def portable_config(config: TapperConfig) -> TapperConfig:
    """The config as saved: a retriever registered in this process is named by its import path, so that
    another process can find it."""
    return replace(config, retriever=portable_retriever_name(config.retriever))


def read_backbone_identity(directory: Path) -> dict[str, Any] | None:
    path = directory / BACKBONE_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_recorded_backbone(directory: Path, config: TapperConfig, saved: dict[str, Any] | None,
                           device: str) -> Backbone:
    """The backbone backbone.json names (tapper_config.json's spec for runs saved before it existed)."""
    from tapper.backbone import BackboneSpecError

    if saved is not None and not saved.get("source"):
        raise BackboneMismatchError(
            f"{directory} was trained on {describe_identity(saved)}: pass that model again "
            "(TapperModel.from_pretrained(run, backbone=...), or --model DIR on the command line)")
    spec = saved["source"] if saved is not None else config.backbone
    try:
        return load_backbone(spec, device=device)
    except BackboneSpecError as e:
        raise BackboneSpecError(
            f"{directory} was trained on backbone {spec!r}, which cannot be loaded here ({e}); pass the same "
            "model from where it is now (backbone=... / --model PATH)") from None


def check_backbone(directory: Path, saved: dict[str, Any] | None, backbone: Backbone,
                   allow_other_backbone: bool = False) -> None:
    """Refuse a backbone of another shape always, and one with other weights unless allowed."""
    if saved is None:
        log.warning("%s records no backbone identity (saved before backbone.json existed): not checked", directory)
        return
    given = backbone_identity(backbone)
    if given["architecture"] != saved.get("architecture"):
        raise BackboneMismatchError(
            f"{directory} was trained on {describe_identity(saved)}, shaped {saved.get('architecture')}; the "
            f"backbone given, {describe_identity(given)}, is shaped {given['architecture']}: its prefixes and "
            "adapters cannot fit it")
    if given["digest"] != saved.get("digest"):
        message = (f"{directory} was trained on {describe_identity(saved)}, but the backbone given is "
                   f"{describe_identity(given)}: other weights")
        if not allow_other_backbone:
            raise BackboneMismatchError(message + " (allow_other_backbone=True / --allow-other-model uses it anyway)")
        log.warning("%s; using it as asked", message)


def read_dir_files(directory: Path) -> dict[str, bytes] | None:
    if not directory.is_dir():
        return None
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def write_dir_files(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)


def task_adapter_files(backbone: Backbone) -> dict[str, bytes] | None:
    """The saved files of the task LoRA merged into this backbone (None: none was)."""
    files = backbone.model.__dict__.get(_TASK_ADAPTER_ATTR)
    return dict(files) if files is not None else None


def note_task_adapter(backbone: Backbone, adapter_dir: Path) -> None:
    """Record on the backbone's model object the adapter just merged into it (from its saved folder)."""
    backbone.model.__dict__[_TASK_ADAPTER_ATTR] = read_dir_files(adapter_dir)


def anchor_embeddings(backbone: Backbone, text: str, length: int) -> torch.Tensor:
    """(L, d) input embeddings of text's first L tokens, cycled when the text is shorter than L."""
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"anchor_text {text!r} has no tokens")
    ids = [ids[i % len(ids)] for i in range(length)]
    emb = backbone.model.get_input_embeddings()
    with torch.no_grad():
        return emb(torch.tensor(ids, device=emb.weight.device)).detach().clone().float()


def merge_task_adapter(backbone: Backbone, adapter_dir: Path) -> Backbone:
    """Apply a saved stage-1 task LoRA and merge it into the backbone weights (no-op if absent)."""
    if not adapter_dir.exists():
        return backbone
    backbone_identity(backbone)  # kept on the model object: the weights before the merge
    merged = PeftModel.from_pretrained(backbone.model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    out = Backbone(model=merged, tokenizer=backbone.tokenizer, name=backbone.name)
    note_task_adapter(out, adapter_dir)
    return out


def get_tapper_model(
    backbone: Backbone, config: TapperConfig, user_ids: list[str] | None = None
) -> TapperModel:
    """The public entry point: wrap a (task-tuned) backbone with TAP-PER's prefixes and bridge."""
    return TapperModel(backbone, config, user_ids)
