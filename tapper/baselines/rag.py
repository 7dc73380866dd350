"""RAG: the user's top-k history records written into the prompt with LaMP's per-task record templates,
read by a backbone fine-tuned on prompts of that very form (LaMP's fine-tuned RAG setting).

Follows LaMP (Salemi et al., 2023), "fine-tuned" retrieval augmentation: the model that answers is trained
on the task with each training input already carrying its retrieved records, so it has learned to use
them. Here that training is a task LoRA made exactly like TAP-PER's stage 1 (`tapper.train.train_task_lora`:
the same other users' pairs from `tapper.train.question_pairs`, the same recipe, budget, resume and stamp)
except that every training prompt carries the records selected for that pair, and it is trained from the
zero-shot backbone, not on top of stage 1 (`fine_tune`). Records are chosen by the one rule every method
shares (tapper.examples: top-k among strictly earlier records, any registered retriever: "bm25",
"dense", "rfmem") and rendered by `Task.rag_prompt` around the example's task input.

Departs from LaMP in: the backbone (a causal LM with a LoRA, where LaMP fine-tunes FlanT5 whole), k=4
records each cut to `max_record_tokens` (LaMP varies k; a small model's context is short), and the number
of training passes, which is stage 1's so that the budget is the same. Without `fine_tune` the prompt goes
to whatever backbone the method was given (e.g. the stage-1 model: RAG without training on its format).

`fine_tune_on_targets` adds the target users' own latest history pairs (`max_history_pairs` each: the pairs
TAP-PER's stage 2 and the same-budget control learn from), each prompt with the records before it, to the
fine-tuning pairs. LaMP trains on thousands of other users who all have profiles; the stage-1 users of the
built tasks are the ones with short histories (on LaMP-2 70 of stage 1's 293 pairs have any record before
them, on LaMP-2N 39 of 254), so without the targets' pairs RAG hardly ever sees a record while it learns,
and the in-domain pairs that lift the control above stage 1 are TAP-PER's alone. No target answer is seen:
a history pair's answer is an earlier record, and a question's own record is never in its user's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tapper.backbone import Backbone
from tapper.baselines.common import BaselineConfig, load_config, save_config, truncate_record
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.generate import generate_batch

if TYPE_CHECKING:
    from tapper.prefix.config import TapperConfig
    from tapper.train import TrainConfig


@dataclass
class RagConfig(BaselineConfig):
    k: int = 4
    retriever: str = "bm25"
    max_record_tokens: int = 48  # each text field of a record is cut to this in the prompt
    fine_tune_on_targets: bool = False  # fine_tune also on the target users' latest history pairs (see above)


class RagBaseline:
    name = "RAG"
    config_class = RagConfig

    def __init__(self, backbone: Backbone, config: RagConfig):
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.builder = ExampleBuilder(self.task, backbone, config.k, config.retriever, config.max_input_tokens)
        self.fine_tuned = False  # set by fine_tune: the backbone has learned to read records

    @property
    def per_user_params(self) -> int:
        return 0

    def fit(self, target: LampSplit) -> None:
        """Nothing to learn from the target users: the records are read as they are (see fine_tune)."""

    # -- fine-tuning with the records in the prompt (LaMP's fine-tuned setting) ---------------------------

    def training_examples(self, stage1_split: LampSplit, cfg: TrainConfig,
                          target: LampSplit | None = None) -> list[Example]:
        """Stage 1's pairs (other users' questions with their golds, plus their latest history pairs as
        `cfg` says), each prompt carrying the records the shared rule selects for it; with
        `fine_tune_on_targets`, then each target user's latest history pairs (`target`'s profiles). Stage 1's
        builder is a fresh one, as stage 1's: `history_inputs` name the target users' records only, and would
        drop these; the targets' pairs come from this method's own builder, which replays what TAP-PER's
        stage 2 replays (LaMP-7: the rewritten inputs)."""
        from tapper.train import history_examples, question_pairs

        builder = ExampleBuilder(self.task, self.backbone, self.config.k, self.config.retriever,
                                 self.config.max_input_tokens)
        pairs = question_pairs(builder, stage1_split, cfg.stage1_max_examples, cfg.stage1_history_pairs)
        splits = [stage1_split]
        if self.config.fine_tune_on_targets:
            if target is None:
                raise ValueError(f"{self.name}: fine_tune_on_targets needs the target users (fine_tune(..., "
                                 "target=...))")
            pairs += history_examples(self.builder, target, self.config.max_history_pairs)
            splits.append(target)
        profiles = self.training_profiles(splits, pairs)
        return [self.render(e, profiles.get(e.example_id, "")) for e in pairs]

    def training_profiles(self, splits: Sequence[LampSplit], pairs: list[Example]) -> dict[str, str]:
        """example id -> text put before the records of that training pair (PAG's summary); none for RAG.
        `splits` hold the pairs' users: stage 1's, then the targets' when they are fine-tuned on too."""
        return {}

    def fine_tune(self, stage1_split: LampSplit, run_dir: str | Path, tcfg: TapperConfig | None = None,
                  cfg: TrainConfig | None = None, target: LampSplit | None = None) -> Backbone:
        """Train a task LoRA like stage 1 but on prompts with their records, from this method's backbone
        (give it the zero-shot one), merge it, and answer with it from now on. Kept in run_dir/task_adapter
        with stage 1's stamp: a rerun with the same pairs and settings reuses it, a killed one resumes.
        `target`: the users to be answered, read only with `fine_tune_on_targets` (their history pairs)."""
        from tapper.train import resolve_configs, train_task_lora

        if tcfg is None or cfg is None:
            tcfg, cfg = resolve_configs(self.config.task, {"backbone": self.backbone.name})
        examples = self.training_examples(stage1_split, cfg, target)
        self.backbone = train_task_lora(self.backbone, examples, tcfg, cfg, Path(run_dir))
        self.builder.backbone = self.backbone
        self.fine_tuned = True
        return self.backbone

    # -- prompts ------------------------------------------------------------------------------------------

    def profile_text(self, example: Example) -> str:
        """Text put before the records (PAG's summary); none for plain RAG."""
        return ""

    def render(self, example: Example, profile: str = "") -> Example:
        """The example with `profile` and its selected records written into the prompt around its task
        input. The selection itself is the builder's (the one rule every method shares)."""
        tok = self.backbone.tokenizer
        records = [truncate_record(r, tok, self.config.max_record_tokens) for r in example.records]
        text = profile + self.task.rag_prompt(example.input, records)
        return replace(example, prompt=self.backbone.format_prompt(text))

    def with_records(self, example: Example) -> Example:
        return self.render(example, self.profile_text(example))

    def question_examples(self, split: LampSplit) -> list[Example]:
        return [self.with_records(self.builder.for_question(q)) for q in split.questions]

    def request_example(self, user_id: str, query: str, history, query_day: float | None = None) -> Example:
        """One live request (the speed benchmark's path): retrieval, prompt, nothing else."""
        return self.with_records(self.builder.for_query(user_id, query, history, query_day=query_day))

    def generate(self, examples: list[Example]) -> list[str]:
        return generate_batch(self.backbone.model, self.backbone.tokenizer, [e.prompt for e in examples], None,
                              self.task.max_new_tokens, answers=self.config.answers(self.task))

    def save(self, directory: str | Path) -> None:
        save_config(self.config, self.name, Path(directory))

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone):
        return cls(backbone, load_config(cls.config_class, cls.name, Path(directory)))
