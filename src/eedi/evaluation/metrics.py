"""MAP@25 as Kaggle scores this competition, and recall@K.

Each row has exactly one relevant misconception. Kaggle's scorer (the classic ``apk``)
walks the first K predictions and, at position i, adds ``hits / i`` for a relevant id not
seen earlier in the list, then divides by ``min(len(actual), K)`` = 1. With one relevant
id that is ``1 / i`` at its *first* position, 0 if it is absent from the top K. A repeated
copy of the relevant id scores nothing more, and repeated copies of other ids still take
up positions: we implement exactly that, so a list padded with duplicates is scored the
way the leaderboard scores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from eedi.config import EvaluationConfig
from eedi.data.schema import K

UNSEEN_SHARE = EvaluationConfig().unseen_share


def average_precision_at_k(actual: int, predicted: Sequence[int], k: int = K) -> float:
    """AP@k for one row with a single relevant id."""
    for position, pred in enumerate(list(predicted)[:k], start=1):
        if pred == actual:
            return 1.0 / position
    return 0.0


def average_precision_from_rank(rank: float | None, k: int = K) -> float:
    """AP@k from the 0-based rank of the first relevant id (None/NaN: not retrieved)."""
    if rank is None or rank != rank or rank >= k:
        return 0.0
    return 1.0 / (rank + 1)


def map_at_k(actual: Iterable[int], predicted: Iterable[Sequence[int]], k: int = K) -> float:
    actual, predicted = list(actual), list(predicted)
    if len(actual) != len(predicted):
        raise ValueError(f"{len(actual)} labels but {len(predicted)} prediction lists")
    if not actual:
        raise ValueError("map_at_k of zero rows is undefined")
    return float(np.mean([average_precision_at_k(a, p, k) for a, p in zip(actual, predicted)]))


def recall_at_k(actual: Iterable[int], predicted: Iterable[Sequence[int]], k: int) -> float:
    actual, predicted = list(actual), list(predicted)
    if len(actual) != len(predicted):
        raise ValueError(f"{len(actual)} labels but {len(predicted)} prediction lists")
    if not actual:
        raise ValueError("recall_at_k of zero rows is undefined")
    return float(np.mean([a in list(p)[:k] for a, p in zip(actual, predicted)]))


def mix_map(seen_map: float | None, unseen_map: float | None, unseen_share: float = UNSEEN_SHARE) -> float | None:
    """``MAP@25 (mix)`` = (1 - s) x seen + s x unseen: MAP@25 on a test set whose share s of the pairs carry a
    misconception unseen in training (``evaluation.unseen_share``). None when either side has no pairs."""
    if not 0.0 <= unseen_share <= 1.0:
        raise ValueError(f"unseen_share must lie in [0, 1], got {unseen_share}")
    if seen_map is None or unseen_map is None:
        return None
    return (1.0 - unseen_share) * float(seen_map) + unseen_share * float(unseen_map)


def format_mix(block: dict, digits: int = 4) -> str:
    """A metric block's ``MAP@25 (mix)`` for a console line: the number, or ``-`` when a side has no pairs."""
    value = block.get("map@25_mix")
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def ranking_metrics(
    actual: Sequence[int],
    predicted: Sequence[Sequence[int]],
    seen: Sequence[bool] | None = None,
    recall_ks: Sequence[int] = (1, 5, 10, 25, 50, 100),
    unseen_share: float = UNSEEN_SHARE,
) -> dict[str, float]:
    """The metric block every stage reports: map@25, recall@K, the same split by seen/unseen and, when both
    sides have pairs, ``map@25_mix`` (:func:`mix_map`) with the ``unseen_share`` it was weighted by."""
    out: dict[str, float] = {"n": len(actual), "map@25": map_at_k(actual, predicted)}
    for k in recall_ks:
        out[f"recall@{k}"] = recall_at_k(actual, predicted, k)
    if seen is not None:
        seen = np.asarray(seen, dtype=bool)
        for name, mask in (("seen", seen), ("unseen", ~seen)):
            idx = np.flatnonzero(mask)
            out[f"n_{name}"] = int(len(idx))
            if len(idx):
                sub_a = [actual[i] for i in idx]
                sub_p = [predicted[i] for i in idx]
                out[f"map@25_{name}"] = map_at_k(sub_a, sub_p)
                out[f"recall@25_{name}"] = recall_at_k(sub_a, sub_p, 25)
        mix = mix_map(out.get("map@25_seen"), out.get("map@25_unseen"), unseen_share)
        if mix is not None:
            out["map@25_mix"] = mix
            out["unseen_share"] = float(unseen_share)
    return out


def candidates_to_lists(candidates: pd.DataFrame, key: str = "QuestionId_Answer") -> dict[str, list[int]]:
    """Long candidates table (key, rank, MisconceptionId) -> {key: [ids by rank]}."""
    ordered = candidates.sort_values([key, "rank"])
    return {k: g["MisconceptionId"].astype(int).tolist() for k, g in ordered.groupby(key, sort=False)}


def fold_metrics(
    ranked: pd.DataFrame,
    pairs: pd.DataFrame,
    rank_column: str,
    seen_ids: set[int],
    unseen_share: float = UNSEEN_SHARE,
) -> dict:
    """ranking_metrics of a (reranked) candidates table, split by whether the label was seen in training."""
    lists = candidates_to_lists(ranked.assign(rank=ranked[rank_column]))
    labels = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"]
    keys = sorted(k for k in lists if k in labels.index)
    actual = [int(labels[k]) for k in keys]
    return ranking_metrics(
        actual, [lists[k] for k in keys], seen=[a in seen_ids for a in actual], unseen_share=unseen_share
    )
