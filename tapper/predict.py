"""Batched prediction over examples, shared by TAP-PER and every baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from tapper.data.tasks import Task
from tapper.examples import Example


def predict_examples(
    generate: Callable[[list[Example]], list[str]],
    examples: Sequence[Example],
    task: Task,
    batch_size: int = 16,
    desc: str = "predict",
    show_progress: bool = True,
) -> tuple[dict[str, str], dict[str, str]]:
    """(cleaned predictions, raw generations), both keyed by example id.

    Examples are batched by prompt length so little time goes into padding."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    cleaned: dict[str, str] = {}
    raw: dict[str, str] = {}
    # disable=None: no bar without a terminal, where its carriage returns would pile up in a log file
    with tqdm(total=len(order), desc=desc, disable=None if show_progress else True, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start:start + batch_size]]
            for ex, text in zip(batch, generate(batch), strict=True):
                raw[ex.example_id] = text
                cleaned[ex.example_id] = task.clean_output(text)
            bar.update(len(batch))
    return cleaned, raw
