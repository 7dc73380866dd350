"""PPlug: a frozen sentence encoder turns the user's history into one personal embedding per request,
prepended to the prompt after a learned instruction embedding.

Follows Liu et al. (2024/2025), "LLMs + Persona-Plug = Personalized LLMs", and its reference code
(rucliujn/PPlug, code/ModelForPer.py): a frozen user-behaviour encoder embeds each history record; an
input-aware aggregator weighs the records by the dot product of their embeddings with the input's
embedding (softmax over the history, no temperature) and sums the records' embeddings after each went
through a projector (a 2-layer GELU MLP to the LLM's width); the result is the personal embedding.
Before it comes an *instruction embedding*: one trainable vector of the encoder's width (drawn
uniform in [0, 1)), through a projector of its own, the same for every request: it tells the frozen LLM
how to read the personal token. Both projector outputs are multiplied by the LLM's input-embedding
norm (the reference hard-codes 539.97 for its LLM; here it is measured on the backbone, the mean L2 norm
of its input-embedding rows) and the instruction one divided by 7, as in the reference. The prompt is
[instruction; personal; task input]. Only the aggregator's input map, the two projectors and the
instruction vector are trained, on the target users' history pairs (the same pairs and passes as
TAP-PER's stage 2); the LLM stays frozen. Nothing is stored per user.

Departs from the reference in: the encoder is all-MiniLM-L6-v2 (there: bge-base), and the input side
uses that same frozen encoder followed by a learned linear map (started at the identity, so the
aggregator starts as the reference's plain dot product) where the reference fine-tunes a copy of the
encoder: a second trainable transformer per step is beyond this project's CPU budget. The history read
is the user's `max_records` most recent records before the query (rendered with the task's record
template, answers included; the reference reads up to 512). A request with no history reads the
projection of the zero vector (the reference pads a history with zero embeddings). The learning rate is
TAP-PER's stage-2 rate for its shared modules (the reference: 1e-4 over every training user of LaMP).
"""

from __future__ import annotations

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
    instruction_divisor: float = 7.0  # the reference's scale of the instruction embedding relative to the personal


class RecencyRetriever:
    """Ranks records newest first: PPlug reads the user's recent history as a whole, not a search hit list."""

    name = "recent"

    def rank(self, query: str, docs: list[str], k: int) -> list[int]:
        return list(range(len(docs) - 1, -1, -1))[: max(k, 0)]


class PersonaPlug(nn.Module):
    """(input embedding, record embeddings) -> (B, 2, d): the instruction embedding, then the personal one."""

    def __init__(self, embed_dim: int, hidden: int, token_norm: float, instruction_divisor: float = 7.0):
        super().__init__()
        self.query_map = nn.Linear(embed_dim, embed_dim)
        with torch.no_grad():  # start as the reference's plain dot product of the two encoders' vectors
            self.query_map.weight.copy_(torch.eye(embed_dim))
            self.query_map.bias.zero_()
        self.project = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.instruction = nn.Parameter(torch.rand(embed_dim))
        self.project_instruction = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.register_buffer("token_norm", torch.tensor(float(token_norm)))
        self.instruction_divisor = instruction_divisor

    def forward(self, z_input: torch.Tensor, z_records: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, e), (B, k, e), (B, k) bool -> (B, 2, d) tokens and (B, k) attention weights. A row without
        any record attends to its first slot, which must then hold the zero vector."""
        mask = mask.clone()
        mask[~mask.any(dim=1), 0] = True
        scores = torch.einsum("be,bke->bk", self.query_map(z_input), z_records)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        personal = torch.einsum("bk,bkd->bd", weights, self.project(z_records)) * self.token_norm
        instruction = self.project_instruction(self.instruction) * (self.token_norm / self.instruction_divisor)
        return torch.stack([instruction.expand_as(personal), personal], dim=1), weights


def input_embedding_norm(backbone: Backbone) -> float:
    """The mean L2 norm of the backbone's input-embedding rows: the size of a token the LLM reads."""
    with torch.no_grad():
        return float(backbone.model.get_input_embeddings().weight.float().norm(dim=-1).mean())


class PPlugBaseline:
    name = "PPlug"

    def __init__(self, backbone: Backbone, config: PPlugConfig, encoder: MiniLMEncoder | None = None):
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.encoder = encoder or minilm_encoder()
        freeze(backbone)
        torch.manual_seed(config.seed)
        self.plug = PersonaPlug(self.encoder.dim, backbone.hidden_size, input_embedding_norm(backbone),
                                config.instruction_divisor).to(backbone.device)
        self.builder = ExampleBuilder(self.task, backbone, config.max_records, RecencyRetriever(),
                                      config.max_input_tokens)

    @property
    def per_user_params(self) -> int:
        return 0

    def soft_token(self, examples: list[Example]) -> torch.Tensor:
        """(B, 2, d): each row's instruction embedding and personal embedding, in that order."""
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
        from tapper.train_loop import token_length, train

        examples = history_examples(self.builder, target, self.config.max_history_pairs)
        cfg = self.config
        epochs = cfg.stage2_epochs if cfg.epochs is None else cfg.epochs
        train(self.plug, examples, self.loss, cfg.loop(cfg.lr, epochs), desc="PPlug",
              length=token_length(self.backbone.tokenizer, cfg.max_answer_tokens))

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
