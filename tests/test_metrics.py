"""LaMP metrics against values worked out by hand."""

import math

import pytest

from tapper.data.tasks import NEWS_CATEGORIES, get_task
from tapper.metrics import bootstrap_ci, evaluate, parse_rating


def test_classification_accuracy_and_macro_f1_over_the_full_label_set():
    golds = {"a": "politics", "b": "politics", "c": "sports", "d": "travel"}
    preds = {"a": " politics\n", "b": "sports", "c": "sports", "d": "banana"}  # "banana" is no label
    scores = evaluate("LaMP_2N", golds, preds)
    assert scores["accuracy"] == pytest.approx(2 / 4)
    # politics: P=1, R=1/2 -> F=2/3; sports: P=1/2, R=1 -> F=2/3; travel and the 12 labels nobody used
    # score 0, and all 15 labels count in the macro average.
    assert len(NEWS_CATEGORIES) == 15
    assert scores["f1"] == pytest.approx((2 / 3 + 2 / 3) / 15)


def test_prediction_outside_label_set_is_wrong_even_if_close():
    golds = {"1": "[1]", "2": "[2]"}
    scores = evaluate(get_task("LaMP_1"), golds, {"1": "[1]", "2": "2"})
    assert scores["accuracy"] == pytest.approx(0.5)
    # [1]: P=1, R=1 -> 1; [2]: never predicted -> 0.
    assert scores["f1"] == pytest.approx(0.5)


def test_gold_outside_label_set_is_an_error_naming_the_question():
    with pytest.raises(ValueError, match="'q7'.*not one of the LaMP_2N labels"):
        evaluate("LaMP_2N", {"q7": "weather"}, {"q7": "politics"})


def test_regression_unparseable_or_out_of_range_counts_as_farthest_rating():
    golds = {"a": "2", "b": "4", "c": "3", "d": "5", "e": "1"}
    preds = {"a": "great!", "b": " 4.0 ", "c": "seven", "d": "9", "e": "nan"}
    # errors: a -> 5 (3), b exact (0), c -> 1 or 5 (2), d -> 1 (4), e -> 5 (4)
    errors = [3, 0, 2, 4, 4]
    scores = evaluate("LaMP_3", golds, preds)
    assert scores["mae"] == pytest.approx(sum(errors) / 5)
    assert scores["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 5))


def test_regression_float_predictions_keep_their_value():
    scores = evaluate("LaMP_3", {"a": "4", "b": "1"}, {"a": "3.5", "b": "1"})
    assert scores["mae"] == pytest.approx(0.25)
    assert scores["rmse"] == pytest.approx(math.sqrt(0.25 / 2))


def test_parse_rating():
    assert parse_rating(" 4.0\n") == 4.0
    assert parse_rating("5") == 5.0
    assert parse_rating("0") is None
    assert parse_rating("4 stars") is None
    assert parse_rating("inf") is None


def test_rouge_is_f_measure_with_stemming_averaged_over_questions():
    golds = {"x": "The cat sat on the mat", "y": "running dogs"}
    preds = {"x": "the cat sat", "y": "dogs run"}
    scores = evaluate("LaMP_7", golds, preds)
    # x: 3 of 6 gold unigrams, all 3 predicted ones right: P=1, R=1/2, F=2/3 (recall alone would be 1/2);
    #    LCS "the cat sat" has the same counts.
    # y: stems {run, dog} match both ways -> ROUGE-1 F=1; LCS is one token of two -> ROUGE-L F=1/2.
    assert scores["rouge-1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["rouge-L"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert scores["rouge-1"] != pytest.approx((0.5 + 1.0) / 2)  # not the recall the reference code reports


def test_missing_and_extra_ids_are_named():
    with pytest.raises(ValueError) as err:
        evaluate("LaMP_7", {"a": "x", "b": "y"}, {"a": "x", "c": "z"})
    assert "'b'" in str(err.value) and "'c'" in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        evaluate("LaMP_7", {}, {})


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    golds = {str(i): str(1 + i % 5) for i in range(40)}
    preds = {str(i): str(1 + (i * 7) % 5) for i in range(40)}
    point = evaluate("LaMP_3", golds, preds)
    ci = bootstrap_ci("LaMP_3", golds, preds, n=200, seed=3)
    assert ci == bootstrap_ci("LaMP_3", golds, preds, n=200, seed=3)
    assert ci != bootstrap_ci("LaMP_3", golds, preds, n=200, seed=4)
    for name in ("mae", "rmse"):
        low, high = ci[name]
        assert low < point[name] < high


def test_bootstrap_of_a_perfect_run_is_a_point():
    golds = {"a": "politics", "b": "sports", "c": "travel"}
    ci = bootstrap_ci("LaMP_2N", golds, dict(golds), n=50)
    assert ci["accuracy"] == (1.0, 1.0)
