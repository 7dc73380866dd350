from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tapper.io_utils import atomic_write_text


@dataclass
class TapperConfig:
    """Everything that shapes a TAP-PER model (not how it is trained: see tapper.train.TrainConfig)."""

    task: str = "LaMP_7"
    backbone: str = "default"  # a spec for tapper.backbone.load_backbone
    prefix_len: int = 8  # L soft tokens per request
    top_k: int = 10  # history records attended by P_q
    retriever: str = "bm25"
    # ablation switches (DESIGN.md): each one hurts in the paper
    use_user_state: bool = True
    use_query_prefix: bool = True
    use_time_decay: bool = True
    use_order_decay: bool = True
    use_bridge: bool = True
    bridge_r: int = 4
    bridge_alpha: int = 8
    bridge_dropout: float = 0.05
    task_lora_r: int = 8
    task_lora_alpha: int = 8
    task_lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: the backbone's attention projections
    init_std: float = 0.02  # P_u rows start at N(0, init_std)
    # When set, every prefix is P = A + P_u + P_q, where A (L, d) is shared, trained in stage 2, and starts
    # as the embeddings of this text's tokens: a prefix that begins as real words is read by the frozen LM
    # from step one, where P_u + P_q alone begin as small random vectors that the bridge must learn to read.
    anchor_text: str | None = None
    # Token budgets (tapper.examples says where each is cut): the prompt's task input (instruction kept
    # whole, content cut), the retrieval query that BM25 and z_q read (content only), and each record as
    # P_q embeds it (its record template, the answer kept). 128 and 128 are the reference's.
    max_input_tokens: int = 192
    max_query_tokens: int = 128
    max_record_tokens: int = 128
    max_answer_tokens: int = 48
    constrain_answers: bool = False  # closed-label tasks: greedy decoding within the task's labels

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TapperConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown TapperConfig field(s) {unknown}")
        return cls(**data)
