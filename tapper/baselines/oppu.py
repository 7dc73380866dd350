"""OPPU: one LoRA per user (r=8 on the query and value projections), fitted on that user's history.

Follows Tan et al. (2024), "Democratizing Large Language Models via Personalized Parameter-Efficient
Fine-tuning", and its reference code (TamSiuhin/OPPU, OPPU.py): per user, a fresh LoRA with r=8,
alpha=8, dropout 0.05 on q_proj and v_proj, trained on that user's history items turned into task pairs
for 2 epochs at lr 1e-4 (AdamW, weight decay 0.01, 10% warmup then linear decay, gradient clipping 0.3),
on top of a base model already tuned to the task and merged. Our base is the *same-budget
non-personalized model* (tapper.baselines.common.nonpersonal_backbone: the stage-1 task LoRA plus the
LoRA that the non-personalized variant trained on all target users' histories, both merged), so that
OPPU is measured against the model it starts from and every user's LoRA adds only what that user is.

Departs from the reference in: history pairs per user (capped at the harness's `max_history_pairs`,
the same pairs every method trains on, where the reference uses every history item), batch size (the
harness's), and the answer: greedy, one line, as every method here (the reference samples at
temperature 0.1). With a handful of pairs per user, 2 epochs at 1e-4 are a handful of small steps: the
reference's setting, kept as it is rather than tuned to our data.

One peft adapter slot lives in the model; each user's weights are a safetensors file of their own.
Training a user resets the slot to the same initial weights, fits it on that user's history pairs with
the shared loop, and writes the file. Predicting loads a user's file into the slot (an "adapter
switch") and answers that user's rows, so a batch of mixed users costs one switch per distinct user.
A user without a file is answered with the slot zeroed: the task-tuned backbone alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tapper import distributed
from tapper.backbone import Backbone
from tapper.baselines.common import (
    BaselineConfig,
    freeze,
    group_rows_by_user,
    history_pairs_by_user,
    load_config,
    save_config,
)
from tapper.batching import answer_loss
from tapper.data.records import LampSplit, ProfileItem
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.generate import generate_batch
from tapper.io_utils import atomic_write_with
from tapper.lora import add_lora
from tapper.train_loop import LoopResult, keep_earlier_seconds, run_fingerprint, token_length, total_steps, train

log = logging.getLogger(__name__)
USERS_DIR = "users"
ADAPTER_SUFFIX = ".safetensors"
MIXED_SLOT = "mixed"  # name prefix of the adapter slots generate_mixed loads users into
FIT_STAMP_KEY = "tapper_fit"  # safetensors metadata: what the adapter was trained from (see fit_stamp)
FIT_SECONDS_KEY = "tapper_fit_seconds"  # and how long its training took (a resumed fit counts kept users' time)


@dataclass
class OppuConfig(BaselineConfig):
    r: int = 8
    alpha: int = 8
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 1e-4
    epochs: float = 2.0  # over one user's history pairs, as the reference


def user_file_name(user_id: str) -> str:
    """A file name that round-trips any user id (ids may hold '/', spaces, ...)."""
    return quote(user_id, safe="-_.") + ADAPTER_SUFFIX


def user_id_of(path: Path) -> str:
    return unquote(path.name.removesuffix(ADAPTER_SUFFIX))


class OppuBaseline:
    name = "OPPU"

    def __init__(self, backbone: Backbone, config: OppuConfig, workdir: str | Path):
        """`backbone` is wrapped in place (pass a copy if it is used elsewhere); user adapters are read
        from and written to `workdir`/users/."""
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.workdir = Path(workdir)
        self.users_dir = self.workdir / USERS_DIR
        freeze(backbone)
        torch.manual_seed(config.seed)
        self.model = add_lora(backbone.model, config.r, config.alpha, config.dropout, list(config.targets))
        self.model.eval()
        self.init_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        self.zero_state = {k: torch.zeros_like(v) for k, v in self.init_state.items()}
        self.builder = ExampleBuilder(self.task, backbone, 0, "bm25", config.max_input_tokens)
        self.active: str | None = None
        self.switches = 0  # adapter loads so far (the cost a mixed-user batch pays)

    @property
    def per_user_params(self) -> int:
        return sum(v.numel() for v in self.init_state.values())

    def user_file(self, user_id: str) -> Path:
        return self.users_dir / user_file_name(user_id)

    def trained_users(self) -> list[str]:
        return sorted(user_id_of(p) for p in self.users_dir.glob(f"*{ADAPTER_SUFFIX}"))

    # -- training ---------------------------------------------------------------------------------

    def fit(self, target: LampSplit) -> None:
        """Train every user with history pairs. Resumable: a user whose file was made from the same starting
        weights, recipe and pairs (its stamp) is kept, so a killed run loses at most the user in progress.
        Under torchrun the users are sharded across the ranks (tapper.distributed.mine): each rank fits and
        writes its own users' files, and all wait at a barrier until every file is written (the workdir must
        be one directory that every rank sees: one machine, or a shared filesystem)."""
        pairs = history_pairs_by_user(self.builder, target, self.config.max_history_pairs)
        for i, (user_id, examples) in enumerate(pairs.items()):
            if not examples or not distributed.mine(user_id):
                continue
            stamp = self.fit_stamp(examples)
            if self.trained_with(user_id, stamp):
                log.info("OPPU user %d/%d (%s): kept from an earlier run", i + 1, len(pairs), user_id)
                keep_earlier_seconds(self.fit_seconds(user_id))
                continue
            result = self.train_user(user_id, examples, stamp=stamp)
            log.info("OPPU user %d/%d (%s): %d steps, loss %.3f", i + 1, len(pairs), user_id, result.steps,
                     result.final_loss)
        distributed.barrier()

    def fit_stamp(self, examples: list[Example]) -> str:
        """What a user's adapter is made from: every weight as its training starts (the task-tuned backbone and
        the shared LoRA initialisation), the recipe, and the user's pairs."""
        set_peft_model_state_dict(self.model, self.init_state)
        self.active = None
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        return run_fingerprint(self.model, trainable, examples, self.config.loop(self.config.lr, self.config.epochs))

    def _metadata(self, user_id: str) -> dict[str, str]:
        path = self.user_file(user_id)
        if not path.exists():
            return {}
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}

    def trained_with(self, user_id: str, stamp: str) -> bool:
        return self._metadata(user_id).get(FIT_STAMP_KEY) == stamp

    def fit_seconds(self, user_id: str) -> float:
        """The training seconds the user's kept adapter took (0 for a file written before they were kept)."""
        return float(self._metadata(user_id).get(FIT_SECONDS_KEY, 0.0))

    def recipe_steps(self, n_examples: int) -> int:
        """Optimisation steps the default recipe takes for a user with n_examples history pairs."""
        return total_steps(n_examples, self.config.loop(self.config.lr, self.config.epochs))

    def history_pairs(self, user_id: str, history: list[ProfileItem]) -> list[Example]:
        return self.builder.from_history(user_id, history, self.config.max_history_pairs)

    def train_user(self, user_id: str, examples: list[Example], max_steps: int | None = None,
                   stamp: str | None = None) -> LoopResult:
        """Fit one user's LoRA from the shared initial weights and write its file (max_steps cuts the
        recipe short, e.g. to time a few steps)."""
        set_peft_model_state_dict(self.model, self.init_state)
        cfg = self.config
        tok = self.backbone.tokenizer

        def loss_fn(batch: list[Example]) -> tuple[torch.Tensor, int]:
            return answer_loss(self.model, tok, [e.prompt for e in batch], [e.answer or "" for e in batch],
                               cfg.max_answer_tokens)

        loop = cfg.loop(cfg.lr, cfg.epochs, max_steps)
        loop.show_progress = False
        result = train(self.model, examples, loss_fn, loop, desc=f"OPPU {user_id}",
                       length=token_length(tok, cfg.max_answer_tokens))
        self.save_user(user_id, stamp, seconds=result.seconds + result.earlier_seconds)
        self.active = user_id
        return result

    def save_user(self, user_id: str, stamp: str | None = None, seconds: float | None = None) -> Path:
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
        path = self.user_file(user_id)
        metadata = {FIT_STAMP_KEY: stamp} if stamp else {}
        if seconds is not None:
            metadata[FIT_SECONDS_KEY] = f"{seconds:.3f}"
        metadata = metadata or None
        atomic_write_with(path, lambda p: save_file(state, str(p), metadata=metadata))
        return path

    # -- inference --------------------------------------------------------------------------------

    def activate(self, user_id: str) -> None:
        """Load the user's adapter into the slot (no-op when it is already there)."""
        if self.active == user_id:
            return
        path = self.user_file(user_id)
        set_peft_model_state_dict(self.model, load_file(str(path)) if path.exists() else self.zero_state)
        self.active = user_id
        self.switches += 1

    def question_examples(self, split: LampSplit) -> list[Example]:
        return [self.builder.for_question(q) for q in split.questions]

    def generate(self, examples: list[Example], max_new_tokens: int | None = None) -> list[str]:
        """Rows grouped by user: one adapter switch and one generation pass per distinct user."""
        out: list[str] = [""] * len(examples)
        for user_id, rows in group_rows_by_user(examples).items():
            self.activate(user_id)
            texts = generate_batch(self.model.get_base_model(), self.backbone.tokenizer,
                                   [examples[i].prompt for i in rows], None,
                                   max_new_tokens or self.task.max_new_tokens,
                                   answers=self.config.answers(self.task))
            for i, text in zip(rows, texts, strict=True):
                out[i] = text
        return out

    def generate_mixed(self, examples: list[Example], max_new_tokens: int | None = None) -> list[str]:
        """Every row in one batch, each through its own user's LoRA (peft's mixed-adapter batch inference):
        each distinct user's file is loaded into a named slot, and a user without a file gets no LoRA
        ("__base__"), as in `generate`. Slots are reused across calls, so memory grows with the largest
        number of distinct users in one batch, not with the users served."""
        slot_of: dict[str, str] = {}
        for e in examples:
            if e.user_id in slot_of:
                continue
            path = self.user_file(e.user_id)
            if not path.exists():
                slot_of[e.user_id] = "__base__"
                continue
            slot = f"{MIXED_SLOT}{len(slot_of)}"
            if slot not in self.model.peft_config:
                self.model.add_adapter(slot, self.model.peft_config["default"])
            set_peft_model_state_dict(self.model, load_file(str(path)), adapter_name=slot)
            slot_of[e.user_id] = slot
        self.model.eval()  # peft refuses per-row adapter_names in training mode (train_user leaves it there)
        return generate_batch(self.model, self.backbone.tokenizer, [e.prompt for e in examples], None,
                              max_new_tokens or self.task.max_new_tokens, answers=self.config.answers(self.task),
                              adapter_names=[slot_of[e.user_id] for e in examples])

    # -- persistence --------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Config plus one adapter file per trained user (copied when `directory` is not the workdir)."""
        directory = Path(directory)
        save_config(self.config, self.name, directory)
        if directory.resolve() != self.workdir.resolve():
            for user_id in self.trained_users():
                src = self.user_file(user_id)
                data = src.read_bytes()
                atomic_write_with(directory / USERS_DIR / src.name, lambda p, d=data: p.write_bytes(d))

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone) -> OppuBaseline:
        directory = Path(directory)
        return cls(backbone, load_config(OppuConfig, cls.name, directory), workdir=directory)
