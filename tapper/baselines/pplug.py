"""PPlug: a frozen sentence encoder turns the user's history into ONE soft token per request.

all-MiniLM-L6-v2 (frozen) embeds each of the user's most recent records (rendered with the task's record
template, answers included) and the input. An input-aware attention (a learned map of the input
embedding, dot product with each record embedding, learned temperature) pools the records into one
384-d user vector; an MLP projects it to the backbone's width, and that token is prepended to the
prompt. Only the attention map and the projection are trained, on the target users' history pairs;
the LLM (already task-tuned) stays frozen. Nothing is stored per user: the token is recomputed from
the history at every request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tapper.backbone import Backbone
from tapper.baselines.common import BaselineConfig, freeze, load_config, save_config
from tapper.batching import answer_loss
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_with
from tapper.retrieval.dense import MiniLMEncoder, minilm_encoder
from tapper.train import history_examples

WEIGHTS_NAME = "pplug.safetensors"


@dataclass
class PPlugConfig(BaselineConfig):
    max_records: int = 32  # the most recent records before the query are embedded
    lr: float = 1e-3
    epochs: float | None = None  # over all target users' history pairs; None: TAP-PER's stage-2 epochs
    init_temperature: float = 0.1


class RecencyRetriever:
    """Ranks records newest first: PPlug reads the user's recent history as a whole, not a search hit list."""

    name = "recent"

    def rank(self, query: str, docs: list[str], k: int) -> list[int]:
        return list(range(len(docs) - 1, -1, -1))[: max(k, 0)]


class PersonaPlug(nn.Module):
    """(input embedding, record embeddings) -> one soft token of the backbone's width."""

    def __init__(self, embed_dim: int, hidden: int, init_temperature: float = 0.1):
        super().__init__()
        self.query_map = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():  # start as plain cosine attention
            self.query_map.weight.copy_(torch.eye(embed_dim))
            self.query_map.bias.zero_()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.project = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, z_input: torch.Tensor, z_records: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, e), (B, k, e), (B, k) bool -> (B, 1, d) token and (B, k) attention weights."""
        scores = torch.einsum("be,bke->bk", self.query_map(z_input), z_records) / self.log_temperature.exp()
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        weights = torch.nan_to_num(weights, nan=0.0)  # no history: nothing to attend to
        pooled = torch.einsum("bk,bke->be", weights, z_records)
        return self.project(pooled)[:, None, :], weights


class PPlugBaseline:
    name = "PPlug"

    def __init__(self, backbone: Backbone, config: PPlugConfig, encoder: MiniLMEncoder | None = None):
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.encoder = encoder or minilm_encoder()
        freeze(backbone)
        torch.manual_seed(config.seed)
        self.plug = PersonaPlug(self.encoder.dim, backbone.hidden_size, config.init_temperature).to(backbone.device)
        self.builder = ExampleBuilder(self.task, backbone, config.max_records, RecencyRetriever(),
                                      config.max_input_tokens)

    @property
    def per_user_params(self) -> int:
        return 0

    def soft_token(self, examples: list[Example]) -> torch.Tensor:
        dev = self.backbone.device
        k = max(1, max(len(e.context.record_texts) for e in examples))
        flat = [t for e in examples for t in e.context.record_texts]
        vecs = torch.from_numpy(self.encoder.encode([e.query for e in examples] + flat)).to(dev)
        z_input, z_flat = vecs[: len(examples)], vecs[len(examples):]
        z_records = torch.zeros(len(examples), k, self.encoder.dim, device=dev)
        mask = torch.zeros(len(examples), k, dtype=torch.bool, device=dev)
        start = 0
        for r, e in enumerate(examples):
            n = len(e.context.record_texts)
            z_records[r, :n] = z_flat[start:start + n]
            mask[r, :n] = True
            start += n
        token, _ = self.plug(z_input, z_records, mask)
        return token

    def loss(self, examples: list[Example]) -> tuple[torch.Tensor, int]:
        return answer_loss(self.backbone.model, self.backbone.tokenizer, [e.prompt for e in examples],
                           [e.answer or "" for e in examples], self.config.max_answer_tokens,
                           self.soft_token(examples))

    def fit(self, target: LampSplit) -> None:
        from tapper.train_loop import train

        examples = history_examples(self.builder, target, self.config.max_history_pairs)
        cfg = self.config
        epochs = cfg.stage2_epochs if cfg.epochs is None else cfg.epochs
        train(self.plug, examples, self.loss, cfg.loop(cfg.lr, epochs), desc="PPlug")

    def question_examples(self, split: LampSplit) -> list[Example]:
        return [self.builder.for_question(q) for q in split.questions]

    @torch.no_grad()
    def generate(self, examples: list[Example]) -> list[str]:
        self.plug.eval()
        return generate_batch(self.backbone.model, self.backbone.tokenizer, [e.prompt for e in examples],
                              self.soft_token(examples), self.task.max_new_tokens,
                              answers=self.config.answers(self.task))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_config(self.config, self.name, directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.plug.state_dict().items()}
        atomic_write_with(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p)))

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone, encoder: MiniLMEncoder | None = None) -> PPlugBaseline:
        directory = Path(directory)
        method = cls(backbone, load_config(PPlugConfig, cls.name, directory), encoder)
        method.plug.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return method
