"""What every baseline shares: its config base, persistence of that config, record truncation for
prompts, history pairs per user, and the fit -> predict -> score run that makes a `VariantResult`
comparable with TAP-PER's."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tapper.backbone import Backbone
from tapper.batching import truncate_text
from tapper.data.records import LampSplit, ProfileItem
from tapper.data.tasks import Task
from tapper.examples import Example, ExampleBuilder
from tapper.experiment import VariantResult, shown_prompts
from tapper.io_utils import atomic_write_text
from tapper.metrics import evaluate
from tapper.predict import predict_examples
from tapper.train_loop import LoopConfig, TrainingClock

CONFIG_NAME = "baseline_config.json"
C = TypeVar("C", bound="BaselineConfig")


@dataclass
class BaselineConfig:
    """The harness settings every baseline takes from the task's TAP-PER config, so that all methods see
    the same query truncation, answer length, history pairs and seed."""

    task: str = "LaMP_7"
    max_input_tokens: int = 192
    max_answer_tokens: int = 48
    max_history_pairs: int | None = 16
    batch_size: int = 8
    seed: int = 0
    show_progress: bool = True
    stage2_epochs: float = 1.0  # TAP-PER's stage-2 passes over the target histories: the same-budget reference
    constrain_answers: bool = False  # closed-label tasks: greedy decoding within the task's labels
    # The optimisation recipe every stage of TAP-PER follows (TrainConfig), and with it every peer's training:
    # linear warmup over this share of the steps, then linear decay; AdamW weight decay; gradient clipping.
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 0.3
    length_buckets: bool = True  # batches of similar token length, as TAP-PER's stages

    def answers(self, task: Task) -> tuple[str, ...] | None:
        """The label set to decode within, when constrained (None: free text)."""
        return task.labels if self.constrain_answers else None

    @classmethod
    def for_task(cls: type[C], task: str, **overrides: Any) -> C:
        """Defaults from tapper/configs/<task>.json (via tapper.train.resolve_configs), then overrides."""
        from tapper.train import resolve_configs

        tcfg, cfg = resolve_configs(task)
        shared = {
            "task": tcfg.task, "max_input_tokens": tcfg.max_input_tokens,
            "max_answer_tokens": tcfg.max_answer_tokens, "max_history_pairs": cfg.max_history_pairs,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "stage2_epochs": cfg.stage2_epochs,
            "constrain_answers": tcfg.constrain_answers,
        }
        shared.update({k: getattr(cfg, k) for k in RECIPE_KEYS if hasattr(cfg, k)})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s): {unknown}")
        return cls(**{**shared, **overrides})

    def loop(self, lr: float, epochs: float = 1.0, max_steps: int | None = None) -> LoopConfig:
        return LoopConfig(lr=lr, epochs=epochs, max_steps=max_steps, batch_size=self.batch_size, seed=self.seed,
                          weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio, decay="linear",
                          max_grad_norm=self.max_grad_norm, show_progress=self.show_progress,
                          bucket=self.length_buckets)


# TrainConfig fields the peers' loops share
RECIPE_KEYS = ("warmup_ratio", "weight_decay", "max_grad_norm", "length_buckets")


def save_config(config: BaselineConfig, method: str, directory: Path) -> None:
    data = {"method": method, **asdict(config)}
    atomic_write_text(Path(directory) / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_config(cls: type[C], method: str, directory: Path) -> C:
    path = Path(directory) / CONFIG_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    found = data.pop("method", None)
    if found != method:
        raise ValueError(f"{path}: holds a {found!r} baseline, not {method!r}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} field(s) {unknown}")
    if isinstance(data.get("targets"), list):
        data["targets"] = tuple(data["targets"])
    return cls(**data)


class Baseline(Protocol):
    """The surface every peer exposes to the CLI and the benchmarks."""

    name: str
    task: Task

    def fit(self, target: LampSplit) -> None:
        """Whatever the method learns or precomputes from the target users' histories."""
        ...

    def question_examples(self, split: LampSplit) -> list[Example]: ...

    def generate(self, examples: list[Example]) -> list[str]: ...

    @property
    def per_user_params(self) -> int: ...

    def save(self, directory: str | Path) -> None: ...


def run_baseline(method: Baseline, target: LampSplit, batch_size: int = 16, show_progress: bool = True,
                 fit: bool = True) -> VariantResult:
    """Fit on the target users' histories, answer their questions, score with LaMP's metrics."""
    with TrainingClock() as clock:  # counts what a resumed fit kept from its earlier processes
        if fit:
            method.fit(target)
    train_seconds = clock.seconds
    examples = method.question_examples(target)
    began = time.perf_counter()
    preds, raw = predict_examples(method.generate, examples, method.task, batch_size, method.name, show_progress)
    predict_seconds = time.perf_counter() - began
    metrics = evaluate(method.task, target.golds, preds) if target.golds else {}
    return VariantResult(method.name, metrics, method.per_user_params, train_seconds, predict_seconds, preds, raw,
                         shown_prompts(examples))


def truncate_record(item: ProfileItem, tokenizer, max_tokens: int) -> ProfileItem:
    """A copy of the record with every text field cut to max_tokens tokens (an article would otherwise
    fill the whole prompt)."""
    cut = {k: truncate_text(tokenizer, v, max_tokens) if isinstance(v, str) else v for k, v in item.fields.items()}
    return ProfileItem(id=item.id, fields=cut, day=item.day, position=item.position)


def history_pairs_by_user(builder: ExampleBuilder, split: LampSplit, max_pairs: int | None
                          ) -> dict[str, list[Example]]:
    """Each target user's history records replayed as (input, output) pairs, users in sorted order."""
    out: dict[str, list[Example]] = {}
    for q in sorted(split.questions, key=lambda q: q.user_id):
        out.setdefault(q.user_id, []).extend(builder.from_history(q.user_id, q.profile, max_pairs))
    return out


def group_rows_by_user(examples: Sequence[Example]) -> dict[str, list[int]]:
    """Row indices per user, users in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.user_id, []).append(i)
    return groups


def freeze(backbone: Backbone) -> None:
    for p in backbone.model.parameters():
        p.requires_grad_(False)


# -- starting points of the trained peers --------------------------------------------------------------

def nonpersonal_backbone(tuned: Backbone, nonpersonal_dir: str | Path) -> Backbone:
    """The same-budget non-personalized model as a plain backbone: a copy of the task-tuned `tuned` with the
    LoRA that the non-personalized variant trained on the target users' histories (its saved run's bridge,
    tapper.baselines.nonpersonal) merged in. OPPU starts from it, as its reference starts from the task model."""
    from tapper.experiment import copy_backbone
    from tapper.prefix.model import BRIDGE_DIR, merge_task_adapter

    bridge = Path(nonpersonal_dir) / BRIDGE_DIR
    if not (bridge / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{bridge} holds no saved LoRA: train the non-personalized variant first "
                                "(tapper.experiment.run_variant with nonpersonal_config)")
    return merge_task_adapter(copy_backbone(tuned), bridge)


def task_tuned_backbone(backbone: Backbone, task: str, run_dir: str | Path, stage1_split: LampSplit | None = None,
                        adapter_dir: str | Path | None = None) -> Backbone:
    """The shared starting point of every trained peer: a copy of `backbone` with the stage-1 task LoRA
    merged in, read from `adapter_dir`, or trained on `stage1_split` (other users) into `run_dir`
    (reused if already there). With neither, the copy is the zero-shot backbone."""
    from tapper.experiment import copy_backbone, stage1
    from tapper.prefix.model import merge_task_adapter
    from tapper.train import resolve_configs

    own = copy_backbone(backbone)
    if adapter_dir is not None:
        if not Path(adapter_dir).is_dir():
            raise FileNotFoundError(f"task adapter directory {adapter_dir} does not exist")
        return merge_task_adapter(own, Path(adapter_dir))
    if stage1_split is not None:
        tcfg, cfg = resolve_configs(task, {"backbone": backbone.name})
        return stage1(own, stage1_split, tcfg, cfg, Path(run_dir))
    return own
