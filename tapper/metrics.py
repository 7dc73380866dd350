"""LaMP's official metrics (its `eval/evaluation.py`), plus bootstrap confidence intervals over questions.

- classification (LaMP-1, LaMP-2, LaMP-2N): accuracy and macro-F1 over the task's fixed label set, after
  stripping whitespace; a prediction outside the label set is its own class that no gold has, so it is wrong
  for every label (it still counts in the F1 denominators), and every label counts in the macro average,
  a label no gold and no prediction has with F1 0.
- regression (LaMP-3): MAE and RMSE. A prediction is parsed with `float()`, as LaMP does, and not clamped:
  "7" against a gold of 5 is an error of 2, "4.5" keeps its value. A prediction that does not parse is
  scored as the rating farthest from the gold (1 or 5; a gold of 3 goes to 5). Unlike LaMP, "nan" and "inf"
  are treated as not parsing (LaMP's scorer, scikit-learn, stops with an error on them).
- generation (LaMP-4..7): "rouge-1" and "rouge-L" are the F-measures the `evaluate` library's rouge metric
  computes with LaMP's call: rouge-score's default tokenizer (lowercase, runs of a-z0-9), **no stemming**,
  averaged over questions. "rouge-1-stemmed" and "rouge-L-stemmed" (`stemmed=True`) are the same with the
  Porter stemmer, as tapper reported before; they score higher and are not LaMP's numbers.

The average: `evaluate` aggregates with rouge-score's BootstrapAggregator and LaMP reports its "mid", the
median of 1,000 unseeded bootstrap means. That value is random: on copy-input over the 1,000 LaMP-7 dev
users it ranged 0.4634..0.4640 over 30 seeds, around the plain mean of 0.46371. tapper reports the plain mean
of the per-question F-measures, the quantity the mid estimates, so a score is the same on every run.

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

# Metric names per task kind, in the order reports show them: LaMP's own.
METRIC_NAMES = {
    "classification": ("accuracy", "f1"),
    "regression": ("mae", "rmse"),
    "generation": ("rouge-1", "rouge-L"),
}
# Offered beside LaMP's ROUGE on request (stemmed=True), never in its place.
STEMMED_METRIC_NAMES = ("rouge-1-stemmed", "rouge-L-stemmed")
RATING_MIN, RATING_MAX = 1.0, 5.0

Columns = dict[str, np.ndarray]


def metric_names(task: str | Task, stemmed: bool = False) -> tuple[str, ...]:
    """The names `evaluate` returns for a task, in order; `stemmed` adds the stemmed ROUGE (generation)."""
    kind = _as_task(task).metric
    extra = STEMMED_METRIC_NAMES if stemmed and kind == "generation" else ()
    return METRIC_NAMES[kind] + extra


def evaluate(
    task: str | Task, golds: Mapping[str, str], preds: Mapping[str, str], *, stemmed: bool = False
) -> dict[str, float]:
    """Score predictions against golds, both keyed by question id; every id must be in both.
    `stemmed`: also the stemmed ROUGE variants (generation tasks; no effect on others)."""
    task = _as_task(task)
    columns = _score_questions(task, golds, preds, stemmed)
    return _aggregate(task, columns, np.arange(len(golds)))


def bootstrap_ci(
    task: str | Task,
    golds: Mapping[str, str],
    preds: Mapping[str, str],
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stemmed: bool = False,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric, resampling questions with replacement."""
    if n < 1:
        raise ValueError(f"bootstrap needs n >= 1 resamples, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    task = _as_task(task)
    columns = _score_questions(task, golds, preds, stemmed)
    size = len(golds)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in metric_names(task, stemmed)}
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


def _score_questions(task: Task, golds: Mapping[str, str], preds: Mapping[str, str], stemmed: bool) -> Columns:
    ids = _check_ids(golds, preds)
    if task.metric == "classification":
        return _label_columns(task, ids, golds, preds)
    if task.metric == "regression":
        return _rating_columns(ids, golds, preds)
    columns = _rouge_columns(ids, golds, preds, use_stemmer=False, suffix="")
    if stemmed:
        columns |= _rouge_columns(ids, golds, preds, use_stemmer=True, suffix="-stemmed")
    return columns


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
    # Generation: every column is a per-question F-measure named after its metric.
    return {name: float(np.mean(values[idx])) for name, values in columns.items()}


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
    """The number a text is, parsed as LaMP parses a rating (`float()` after stripping), not clamped to
    1..5 ("7" is 7.0, "0" is 0.0); None when it is not a finite number ("4 stars", "nan")."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _farthest_rating(gold: float) -> float:
    # Ties (gold 3) go to 5, as in LaMP's evaluation; the distance is the same either way.
    return RATING_MIN if abs(gold - RATING_MIN) > abs(gold - RATING_MAX) else RATING_MAX


def _rating_columns(ids: list[str], golds: Mapping[str, str], preds: Mapping[str, str]) -> Columns:
    gold, pred = [], []
    for qid in ids:
        g = parse_rating(golds[qid])
        if g is None or not RATING_MIN <= g <= RATING_MAX:
            raise ValueError(f"gold output of question {qid!r} is {golds[qid]!r}, not a rating in 1..5")
        p = parse_rating(preds[qid])
        gold.append(g)
        pred.append(_farthest_rating(g) if p is None else p)
    return {"gold": np.array(gold), "pred": np.array(pred)}


def _rouge_columns(
    ids: list[str], golds: Mapping[str, str], preds: Mapping[str, str], *, use_stemmer: bool, suffix: str
) -> Columns:
    from rouge_score.rouge_scorer import RougeScorer

    # LaMP strips both texts and passes each gold as a one-reference list (score_multi over one reference
    # is score); the default tokenizer drops the surrounding whitespace anyway.
    scorer = RougeScorer(["rouge1", "rougeL"], use_stemmer=use_stemmer)
    rouge1, rougel = [], []
    for qid in ids:
        scores = scorer.score(golds[qid].strip(), preds[qid].strip())  # (target, prediction)
        rouge1.append(scores["rouge1"].fmeasure)
        rougel.append(scores["rougeL"].fmeasure)
    return {f"rouge-1{suffix}": np.array(rouge1), f"rouge-L{suffix}": np.array(rougel)}
