"""LaMP metrics against values worked out by hand."""

import math

import pytest

from tapper.data.tasks import NEWS_CATEGORIES, get_task
from tapper.metrics import bootstrap_ci, evaluate, metric_names, parse_rating


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


def test_classification_is_case_sensitive_after_stripping_as_in_lamp():
    # LaMP strips both sides and looks the text up in its label list as it is: "Politics" is no label.
    scores = evaluate("LaMP_2N", {"a": "politics", "b": "sports"}, {"a": "Politics", "b": "\tsports "})
    assert scores["accuracy"] == pytest.approx(1 / 2)
    # politics: never predicted -> 0; sports: P=1, R=1 -> 1; 15 labels in the average.
    assert scores["f1"] == pytest.approx(1 / 15)


def test_regression_parses_any_float_without_clamping():
    # LaMP: float(prediction); "7" against 5 is an error of 2, not the farthest rating (which would be 4).
    golds = {"a": "5", "b": "5", "c": "1", "d": "4", "e": "1", "f": "2"}
    preds = {"a": "7", "b": "0", "c": "-1", "d": " 4.5\n", "e": "1e0", "f": "2.0"}
    errors = [2, 5, 2, 0.5, 0, 0]
    scores = evaluate("LaMP_3", golds, preds)
    assert scores["mae"] == pytest.approx(sum(errors) / 6)
    assert scores["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 6))


def test_regression_unparseable_counts_as_farthest_rating():
    golds = {"a": "2", "b": "4", "c": "3", "d": "5", "e": "1", "f": "4"}
    preds = {"a": "great!", "b": " 4.0 ", "c": "seven", "d": "", "e": "nan", "f": "4 stars"}
    # errors: a -> 5 (3), b exact (0), c -> 5 (2; gold 3 is 2 from both ends), d -> 1 (4), e -> 5 (4),
    # f -> 1 (3)
    errors = [3, 0, 2, 4, 4, 3]
    scores = evaluate("LaMP_3", golds, preds)
    assert scores["mae"] == pytest.approx(sum(errors) / 6)
    assert scores["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 6))


def test_regression_float_predictions_keep_their_value():
    scores = evaluate("LaMP_3", {"a": "4", "b": "1"}, {"a": "3.5", "b": "1"})
    assert scores["mae"] == pytest.approx(0.25)
    assert scores["rmse"] == pytest.approx(math.sqrt(0.25 / 2))


def test_regression_gold_outside_the_scale_is_an_error():
    with pytest.raises(ValueError, match="'q1'.*not a rating in 1..5"):
        evaluate("LaMP_3", {"q1": "7"}, {"q1": "5"})


def test_parse_rating():
    assert parse_rating(" 4.0\n") == 4.0
    assert parse_rating("5") == 5.0
    assert parse_rating("7") == 7.0  # not clamped
    assert parse_rating("0") == 0.0
    assert parse_rating("4 stars") is None
    assert parse_rating("inf") is None
    assert parse_rating("nan") is None


def test_rouge_is_lamps_unstemmed_f_measure_averaged_over_questions():
    golds = {"x": "The cat sat on the mat", "y": "running dogs"}
    preds = {"x": "the cat sat", "y": "dogs run"}
    scores = evaluate("LaMP_7", golds, preds)
    assert list(scores) == ["rouge-1", "rouge-L"]
    # x: 3 of 6 gold unigrams, all 3 predicted ones right: P=1, R=1/2, F=2/3 (recall alone would be 1/2);
    #    LCS "the cat sat" has the same counts.
    # y: no stemming, so only "dogs" matches: P=1/2, R=1/2 -> F=1/2 for both ROUGE-1 and ROUGE-L.
    assert scores["rouge-1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["rouge-L"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_rouge_tokens_are_lowercased_alphanumeric_runs_with_clipped_counts():
    golds = {"p": "Don't stop!", "q": "a a b", "r": "hello world", "s": "Café"}
    preds = {"p": "dont STOP", "q": "a a a", "r": "", "s": "caf"}
    scores = evaluate("LaMP_5", golds, preds)
    # p: gold -> [don, t, stop], prediction -> [dont, stop]: 1 match, P=1/2, R=1/3 -> F=2/5; LCS is 1 too.
    # q: "a" matches min(2, 3) = 2 times: P=2/3, R=2/3 -> F=2/3; LCS "a a" = 2 -> F=2/3.
    # r: empty prediction -> 0.
    # s: non-ASCII letters are separators: gold -> [caf], prediction -> [caf] -> 1.
    assert scores["rouge-1"] == pytest.approx((2 / 5 + 2 / 3 + 0 + 1) / 4)
    assert scores["rouge-L"] == pytest.approx((2 / 5 + 2 / 3 + 0 + 1) / 4)


def test_rouge_lcs_differs_from_unigram_overlap_when_order_differs():
    # gold [a, b, c, d], prediction [d, c, b, a]: every unigram matches (F=1), the LCS is one token: F=1/4.
    scores = evaluate("LaMP_7", {"x": "a b c d"}, {"x": "d c b a"})
    assert scores["rouge-1"] == pytest.approx(1.0)
    assert scores["rouge-L"] == pytest.approx(1 / 4)


def test_stemmed_rouge_is_offered_under_its_own_names():
    golds = {"x": "The cat sat on the mat", "y": "running dogs"}
    preds = {"x": "the cat sat", "y": "dogs run"}
    assert metric_names("LaMP_7") == ("rouge-1", "rouge-L")
    assert metric_names("LaMP_7", stemmed=True) == ("rouge-1", "rouge-L", "rouge-1-stemmed", "rouge-L-stemmed")
    assert metric_names("LaMP_3", stemmed=True) == ("mae", "rmse")
    scores = evaluate("LaMP_7", golds, preds, stemmed=True)
    assert list(scores) == list(metric_names("LaMP_7", stemmed=True))
    # y stemmed: {run, dog} match both ways -> ROUGE-1 F=1; the LCS is one token of two -> ROUGE-L F=1/2.
    assert scores["rouge-1-stemmed"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["rouge-L-stemmed"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["rouge-1"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # LaMP's, unchanged by the option
    ci = bootstrap_ci("LaMP_7", golds, preds, n=20, stemmed=True)
    assert set(ci) == set(scores)


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
