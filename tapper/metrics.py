"""LaMP's official metrics, plus bootstrap confidence intervals over questions.

- classification (LaMP-1, LaMP-2, LaMP-2N): accuracy and macro-F1 over the task's fixed label set; a
  prediction outside the label set is wrong for every label (it still counts in the F1 denominators).
- regression (LaMP-3): MAE and RMSE; a prediction that is not a number in 1..5 is scored as the rating
  farthest from the gold (LaMP maps it to 1 or 5, whichever is farther; a gold of 3 is 2 away from both).
- generation (LaMP-4..7): ROUGE-1 and ROUGE-L F-measure with stemming, averaged over questions.

Scoring is split in two steps: every question is scored on its own once (`_score_questions`), then the
per-question columns are aggregated over any multiset of questions (`_aggregate`). `evaluate` aggregates
over all questions, `bootstrap_ci` over resamples, without re-running ROUGE for each resample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from sklearn.metrics import f1_score

from tapper.data.tasks import Task, get_task

# Metric names per task kind, in the order reports show them.
METRIC_NAMES = {
    "classification": ("accuracy", "f1"),
    "regression": ("mae", "rmse"),
    "generation": ("rouge-1", "rouge-L"),
}
RATING_MIN, RATING_MAX = 1.0, 5.0

Columns = dict[str, np.ndarray]


def evaluate(task: str | Task, golds: Mapping[str, str], preds: Mapping[str, str]) -> dict[str, float]:
    """Score predictions against golds, both keyed by question id; every id must be in both."""
    task = _as_task(task)
    columns = _score_questions(task, golds, preds)
    return _aggregate(task, columns, np.arange(len(golds)))


def bootstrap_ci(
    task: str | Task,
    golds: Mapping[str, str],
    preds: Mapping[str, str],
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric, resampling questions with replacement."""
    if n < 1:
        raise ValueError(f"bootstrap needs n >= 1 resamples, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    task = _as_task(task)
    columns = _score_questions(task, golds, preds)
    size = len(golds)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in METRIC_NAMES[task.metric]}
    for _ in range(n):
        for name, value in _aggregate(task, columns, rng.integers(0, size, size)).items():
            draws[name].append(value)
    quantiles = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {
        name: tuple(float(q) for q in np.percentile(values, quantiles))  # type: ignore[misc]
        for name, values in draws.items()
    }


def _as_task(task: str | Task) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def _check_ids(golds: Mapping[str, str], preds: Mapping[str, str]) -> list[str]:
    """The shared ids in a fixed order; any id present on one side only is an error."""
    missing = sorted(set(golds) - set(preds))
    extra = sorted(set(preds) - set(golds))
    problems = []
    if missing:
        problems.append(f"{len(missing)} gold id(s) without a prediction: {_some(missing)}")
    if extra:
        problems.append(f"{len(extra)} predicted id(s) without a gold: {_some(extra)}")
    if problems:
        raise ValueError("; ".join(problems))
    if not golds:
        raise ValueError("no questions to score: golds and predictions are empty")
    return sorted(golds)


def _some(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _score_questions(task: Task, golds: Mapping[str, str], preds: Mapping[str, str]) -> Columns:
    ids = _check_ids(golds, preds)
    if task.metric == "classification":
        return _label_columns(task, ids, golds, preds)
    if task.metric == "regression":
        return _rating_columns(ids, golds, preds)
    return _rouge_columns(ids, golds, preds)


def _aggregate(task: Task, columns: Columns, idx: np.ndarray) -> dict[str, float]:
    if task.metric == "classification":
        gold, pred = columns["gold"][idx], columns["pred"][idx]
        labels = list(range(len(task.labels or ())))
        return {
            "accuracy": float(np.mean(gold == pred)),
            "f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        }
    if task.metric == "regression":
        error = columns["pred"][idx] - columns["gold"][idx]
        return {"mae": float(np.mean(np.abs(error))), "rmse": float(math.sqrt(np.mean(error**2)))}
    return {
        "rouge-1": float(np.mean(columns["rouge1"][idx])),
        "rouge-L": float(np.mean(columns["rougeL"][idx])),
    }


def _label_columns(task: Task, ids: list[str], golds: Mapping[str, str], preds: Mapping[str, str]) -> Columns:
    # Labels become their index in the task's label set; anything else in a prediction is -1, a class
    # that no gold has, so it counts as a false negative for the gold's label and never as a hit.
    index = {label: i for i, label in enumerate(task.labels or ())}
    gold = []
    for qid in ids:
        label = golds[qid].strip()
        if label not in index:
            raise ValueError(
                f"gold output of question {qid!r} is {golds[qid]!r}, not one of the {task.name} labels: "
                + ", ".join(index)
            )
        gold.append(index[label])
    pred = [index.get(preds[qid].strip(), -1) for qid in ids]
    return {"gold": np.array(gold), "pred": np.array(pred)}


def parse_rating(text: str) -> float | None:
    """The rating a text states, if it is a plain number in 1..5 ("4", " 4.0 "); otherwise None."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if RATING_MIN <= value <= RATING_MAX else None


def _farthest_rating(gold: float) -> float:
    # Ties (gold 3) go to 5, as in LaMP's evaluation; the distance is the same either way.
    return RATING_MIN if abs(gold - RATING_MIN) > abs(gold - RATING_MAX) else RATING_MAX


def _rating_columns(ids: list[str], golds: Mapping[str, str], preds: Mapping[str, str]) -> Columns:
    gold, pred = [], []
    for qid in ids:
        g = parse_rating(golds[qid])
        if g is None:
            raise ValueError(f"gold output of question {qid!r} is {golds[qid]!r}, not a rating in 1..5")
        p = parse_rating(preds[qid])
        gold.append(g)
        pred.append(_farthest_rating(g) if p is None else p)
    return {"gold": np.array(gold), "pred": np.array(pred)}


def _rouge_columns(ids: list[str], golds: Mapping[str, str], preds: Mapping[str, str]) -> Columns:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    rouge1, rougel = [], []
    for qid in ids:
        scores = scorer.score(golds[qid], preds[qid])  # (target, prediction)
        rouge1.append(scores["rouge1"].fmeasure)
        rougel.append(scores["rougeL"].fmeasure)
    return {"rouge1": np.array(rouge1), "rougeL": np.array(rougel)}
