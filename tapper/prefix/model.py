"""TapperModel: a frozen causal LM + bridge LoRA, reading P = P_u + P_q prepended to its input embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.backbone import Backbone, load_backbone
from tapper.batching import answer_loss
from tapper.data.tasks import get_task
from tapper.examples import Example
from tapper.generate import generate_batch
from tapper.io_utils import atomic_replace_dir, atomic_write_with
from tapper.lora import add_lora
from tapper.prefix.config import TapperConfig
from tapper.prefix.query_prefix import QueryPrefix
from tapper.prefix.user_state import UserStateTable

CONFIG_NAME = "tapper_config.json"
QUERY_PREFIX_NAME = "query_prefix.safetensors"
TASK_ADAPTER_DIR = "task_adapter"
BRIDGE_DIR = "bridge"
USER_STATE_DIR = "user_state"
ANCHOR_KEY = "prefix_anchor"  # stored with P_q's weights: both are shared, trained in stage 2


class TapperModel(nn.Module):
    def __init__(self, backbone: Backbone, config: TapperConfig, user_ids: list[str] | None = None):
        super().__init__()
        self.config = config
        self.task = get_task(config.task)
        self.tokenizer = backbone.tokenizer
        self.backbone_name = backbone.name
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
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
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
        cls, directory: str | Path, device: str = "cpu", backbone: Backbone | None = None
    ) -> TapperModel:
        """Rebuild a saved run: backbone (+ merged task LoRA), bridge, P_q, user table."""
        directory = Path(directory)
        config = TapperConfig.load(directory / CONFIG_NAME)
        backbone = backbone or load_backbone(config.backbone, device=device)
        backbone = merge_task_adapter(backbone, directory / TASK_ADAPTER_DIR)
        bridge_dir = directory / BRIDGE_DIR
        model = cls(backbone, TapperConfig(**{**config.__dict__, "use_bridge": False}))
        model.config = config
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
    merged = PeftModel.from_pretrained(backbone.model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return Backbone(model=merged, tokenizer=backbone.tokenizer, name=backbone.name)


def get_tapper_model(
    backbone: Backbone, config: TapperConfig, user_ids: list[str] | None = None
) -> TapperModel:
    """The public entry point: wrap a (task-tuned) backbone with TAP-PER's prefixes and bridge."""
    return TapperModel(backbone, config, user_ids)
