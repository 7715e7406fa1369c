import pandas as pd
import pytest

from eedi.evaluation.metrics import (
    average_precision_at_k,
    candidates_to_lists,
    map_at_k,
    mix_map,
    ranking_metrics,
    recall_at_k,
)


def test_ap_is_reciprocal_rank_of_first_hit():
    assert average_precision_at_k(7, [7, 1, 2]) == 1.0
    assert average_precision_at_k(7, [1, 7, 2]) == 0.5
    assert average_precision_at_k(7, [1, 2, 3, 7]) == 0.25
    assert average_precision_at_k(7, [1, 2, 3]) == 0.0


def test_ap_cuts_at_k():
    preds = list(range(100, 124)) + [7]  # 7 at position 25
    assert average_precision_at_k(7, preds, k=25) == pytest.approx(1 / 25)
    assert average_precision_at_k(7, list(range(100, 125)) + [7], k=25) == 0.0  # position 26


def test_duplicates_are_scored_like_kaggle():
    # a repeated relevant id counts once, at its first position
    assert average_precision_at_k(7, [1, 7, 7, 7]) == 0.5
    # repeated other ids still take positions: 7 sits at position 4
    assert average_precision_at_k(7, [1, 1, 1, 7]) == 0.25


def test_map_hand_computed():
    actual = [1, 2, 3, 4]
    predicted = [[1, 9], [9, 2], [9, 9, 9, 3], [9]]
    # (1 + 1/2 + 1/4 + 0) / 4
    assert map_at_k(actual, predicted) == pytest.approx(1.75 / 4)


def test_map_ties_have_no_special_meaning():
    # Kaggle scores the list as given: two ids with equal model scores still have distinct ranks.
    assert map_at_k([5, 6], [[6, 5], [6, 5]]) == pytest.approx((0.5 + 1.0) / 2)


def test_recall_at_k():
    actual = [1, 2, 3]
    predicted = [[1, 9], [9, 2], [9, 9, 3]]
    assert recall_at_k(actual, predicted, 1) == pytest.approx(1 / 3)
    assert recall_at_k(actual, predicted, 2) == pytest.approx(2 / 3)
    assert recall_at_k(actual, predicted, 3) == 1.0


def test_errors_on_bad_input():
    with pytest.raises(ValueError, match="2 labels but 1"):
        map_at_k([1, 2], [[1]])
    with pytest.raises(ValueError, match="zero rows"):
        map_at_k([], [])


def test_ranking_metrics_split_by_seen():
    out = ranking_metrics([1, 2, 3, 4], [[1], [9, 2], [3], [9]], seen=[True, True, False, False], recall_ks=(1, 2))
    assert out["map@25"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert out["map@25_seen"] == pytest.approx(0.75)
    assert out["map@25_unseen"] == pytest.approx(0.5)
    assert out["recall@1"] == pytest.approx(0.5)
    assert out["n_unseen"] == 2
    # the competition's mix, by hand: 0.25 x 0.75 + 0.75 x 0.5 = 0.5625 (plain MAP@25 above: 0.625)
    assert out["map@25_mix"] == pytest.approx(0.5625) and out["unseen_share"] == 0.75
    half = ranking_metrics([1, 2, 3, 4], [[1], [9, 2], [3], [9]], seen=[True, True, False, False], unseen_share=0.5)
    assert half["map@25_mix"] == pytest.approx(0.625)


def test_mix_needs_both_sides_and_a_share_in_range():
    assert mix_map(0.8, 0.2) == pytest.approx(0.25 * 0.8 + 0.75 * 0.2)
    assert mix_map(0.8, 0.2, unseen_share=0.0) == pytest.approx(0.8)
    assert mix_map(None, 0.2) is None
    only_seen = ranking_metrics([1, 2], [[1], [2]], seen=[True, True])
    assert "map@25_mix" not in only_seen and only_seen["n_unseen"] == 0
    assert "map@25_mix" not in ranking_metrics([1], [[1]])  # no seen/unseen split at all
    with pytest.raises(ValueError, match="unseen_share"):
        mix_map(0.5, 0.5, unseen_share=1.5)


def test_candidates_to_lists_orders_by_rank():
    df = pd.DataFrame({"QuestionId_Answer": ["1_B", "1_B", "2_C"], "rank": [1, 0, 0], "MisconceptionId": [5, 6, 7]})
    assert candidates_to_lists(df) == {"1_B": [6, 5], "2_C": [7]}
