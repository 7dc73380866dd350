"""RAG: the user's top-k history records written into the prompt with LaMP's per-task record templates.

Records are chosen by the shared selection rule (tapper.examples: top-k among strictly earlier records,
any registered retriever: "bm25", "dense", "rfmem"), rendered by `Task.rag_prompt`, and the prompt goes
to the task-tuned backbone as it is: nothing is trained beyond the shared stage-1 task LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tapper.backbone import Backbone
from tapper.baselines.common import BaselineConfig, load_config, save_config, truncate_record
from tapper.data.records import LampSplit
from tapper.data.tasks import get_task
from tapper.examples import Example, ExampleBuilder
from tapper.generate import generate_batch


@dataclass
class RagConfig(BaselineConfig):
    k: int = 4
    retriever: str = "bm25"
    max_record_tokens: int = 48  # each text field of a record is cut to this in the prompt


class RagBaseline:
    name = "RAG"
    config_class = RagConfig

    def __init__(self, backbone: Backbone, config: RagConfig):
        self.backbone = backbone
        self.config = config
        self.task = get_task(config.task)
        self.builder = ExampleBuilder(self.task, backbone, config.k, config.retriever, config.max_input_tokens)

    @property
    def per_user_params(self) -> int:
        return 0

    def fit(self, target: LampSplit) -> None:
        """Nothing to learn: the task-tuned backbone reads the records as they are."""

    def profile_text(self, example: Example) -> str:
        """Text put before the records (PAG's summary); none for plain RAG."""
        return ""

    def with_records(self, example: Example) -> Example:
        """The example with its selected records written into the prompt. The selection itself is the
        builder's (the one rule every method shares), so the records are rendered after it ran."""
        tok = self.backbone.tokenizer
        records = [truncate_record(r, tok, self.config.max_record_tokens) for r in example.records]
        text = self.profile_text(example) + self.task.rag_prompt(example.input, records)
        return replace(example, prompt=self.backbone.format_prompt(text))

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
