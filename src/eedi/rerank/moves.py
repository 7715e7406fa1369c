"""What a CPU second stage may move (``reranker.features`` / ``reranker.pointwise``: ``move``, ``top_k``,
``blend_weight``), within each pair's top ``reranker.depth``:

* ``all``: the candidates are ordered by the model's score;
* ``seen``: only the candidates seen in training are reordered, among the places the retriever gave them; the
  unseen ones keep their ranks (the retriever's unseen prior and its test-time calibration stay as they are);
* ``top_k``: only the retriever's first ``top_k`` are reordered among themselves;
* ``blend``: ordered by ``blend_weight`` x the model's score + (1 - ``blend_weight``) x the retriever's score, both
  min-max scaled within the pair.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd


def top_candidates(candidates: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Each pair's first ``depth`` candidates, pairs consecutive and in rank order (original index kept)."""
    ordered = candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable")
    return ordered[ordered.groupby("QuestionId_Answer", sort=False).cumcount() < depth]


def _minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def move(
    mode: str, model: np.ndarray, retriever: np.ndarray, seen: np.ndarray, top_k: int, blend_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """One pair's new order (candidate positions, best first) and the score it reports per candidate, for
    candidates given in retriever order. Ties keep retriever order."""
    n = len(model)
    if mode == "all":
        return np.argsort(-model, kind="stable"), model
    if mode == "blend":
        fused = blend_weight * _minmax(model) + (1 - blend_weight) * _minmax(retriever)
        return np.argsort(-fused, kind="stable"), fused
    order = np.arange(n)
    if mode == "top_k":
        k = min(top_k, n)
        order[:k] = np.argsort(-model[:k], kind="stable")
        return order, model
    if mode == "seen":
        slots = np.flatnonzero(seen)
        order[slots] = slots[np.argsort(-model[slots], kind="stable")]
        return order, model
    raise ValueError(f"unknown reranker move {mode!r}")


def rerank_top(
    candidates: pd.DataFrame,
    depth: int,
    section,
    score: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]],
) -> pd.DataFrame:
    """The candidate rows (all of them) plus ``reranker_score`` (the model's score; NaN below depth),
    ``final_score`` (what ``section.move`` orders by; NaN below depth) and ``final_rank`` (0-based; below depth the
    retriever's order), as :func:`eedi.rerank.schemes.rerank` returns them. ``score`` maps each pair's top
    ``depth`` rows (pairs consecutive, in rank order) to the model's scores and whether each candidate was seen
    in training."""
    ordered = candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable").reset_index(drop=True)
    out = ordered.assign(
        reranker_score=np.nan,
        final_score=np.nan,
        final_rank=ordered.groupby("QuestionId_Answer", sort=False).cumcount().to_numpy(),
    )
    top = top_candidates(ordered, depth)
    if top.empty:
        return out
    model, seen = score(top)
    keys = top["QuestionId_Answer"].to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bounds = [*starts.tolist(), len(keys)]
    final_score = np.empty(len(top))
    final_rank = np.empty(len(top), dtype=np.int64)
    retriever = top["score"].to_numpy(dtype=np.float64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        order, final_score[a:b] = move(
            section.move, model[a:b], retriever[a:b], seen[a:b], section.top_k, section.blend_weight
        )
        final_rank[a + order] = np.arange(b - a)
    index = top.index.to_numpy()
    out.loc[index, "reranker_score"] = model
    out.loc[index, "final_score"] = final_score
    out.loc[index, "final_rank"] = final_rank
    return out.sort_values(["QuestionId_Answer", "final_rank"], kind="stable").reset_index(drop=True)
