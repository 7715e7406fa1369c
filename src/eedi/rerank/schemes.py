"""Reranking a retriever's top candidates with a scorer: sliding or tournament windows,
fused with the retriever's scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from eedi.config import Config, RerankerConfig
from eedi.rerank.ltr import FeatureReranker
from eedi.rerank.pointwise import PointwiseReranker
from eedi.rerank.prompts import build_prompt, misconception_names, pair_lookup
from eedi.rerank.scoring import make_scorer, score_with
from eedi.rerank.windows import sliding_windows

log = logging.getLogger(__name__)


def minmax(scores: np.ndarray) -> np.ndarray:
    """Retriever cosines scaled to [0, 1] within one pair's reranked candidates (all equal -> 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    span = scores.max() - scores.min() if len(scores) else 0.0
    return (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)


def fuse(reranker_scores: np.ndarray, retriever_scores: np.ndarray, weight: float) -> np.ndarray:
    """w * reranker probability + (1 - w) * min-max scaled retriever score."""
    return weight * np.asarray(reranker_scores, dtype=np.float64) + (1 - weight) * minmax(retriever_scores)


class _WindowScorer:
    """Scores windows of (pair, candidate ids) in one batch, with optional reversed-order TTA."""

    def __init__(self, scorer, pairs: Mapping[str, Mapping], names: Mapping[int, str], rc: RerankerConfig):
        self.scorer, self.pairs, self.names, self.rc = scorer, pairs, names, rc

    def __call__(self, windows: list[tuple[str, list[int]]]) -> list[np.ndarray]:
        orders = [(key, ids) for key, ids in windows]
        if self.rc.tta_reverse:
            orders += [(key, ids[::-1]) for key, ids in windows]
        prompts = [
            build_prompt(self.pairs[key], [self.names[c] for c in ids], self.scorer.tokenizer) for key, ids in orders
        ]
        probs = score_with(self.scorer, prompts, [len(ids) for _, ids in orders], self.rc.max_length)
        if not self.rc.tta_reverse:
            return probs
        n = len(windows)
        return [(probs[i] + probs[n + i][::-1]) / 2 for i in range(n)]


def _rerank_sliding(groups: dict[str, pd.DataFrame], score, rc: RerankerConfig) -> dict[str, tuple]:
    jobs, owners = [], []
    for key, top in groups.items():
        ids = top["MisconceptionId"].tolist()
        for positions in sliding_windows(len(ids), rc.window_size, rc.stride):
            jobs.append((key, [ids[p] for p in positions]))
            owners.append((key, positions))
    probs = score(jobs)
    sums = {key: np.zeros(len(top)) for key, top in groups.items()}
    counts = {key: np.zeros(len(top)) for key, top in groups.items()}
    for (key, positions), p in zip(owners, probs):
        sums[key][positions] += p
        counts[key][positions] += 1
    out = {}
    for key, top in groups.items():
        reranker = sums[key] / np.maximum(counts[key], 1)
        final = fuse(reranker, top["score"].to_numpy(), rc.fusion_weight)
        # Stable sort on the negated score: ties keep retriever order.
        order = np.argsort(-final, kind="stable")
        out[key] = (reranker, final, order)
    return out


def _rerank_tournament(groups: dict[str, pd.DataFrame], score, rc: RerankerConfig) -> dict[str, tuple]:
    retriever = {key: minmax(top["score"].to_numpy()) for key, top in groups.items()}
    ids = {key: top["MisconceptionId"].tolist() for key, top in groups.items()}
    reranker = {key: np.zeros(len(top)) for key, top in groups.items()}
    fused = {key: np.zeros(len(top)) for key, top in groups.items()}
    rounds = {key: np.zeros(len(top), dtype=np.int64) for key, top in groups.items()}
    pools = {key: list(range(len(top))) for key, top in groups.items() if len(top)}
    while pools:
        jobs, owners = [], []
        for key, pool in pools.items():
            # ceil(len / size) near-equal groups: none larger than a window, none of a single candidate
            for chunk in np.array_split(np.asarray(pool), -(-len(pool) // rc.window_size)):
                jobs.append((key, [ids[key][p] for p in chunk]))
                owners.append((key, chunk))
        probs = score(jobs)
        survivors: dict[str, list[int]] = {}
        for (key, chunk), p in zip(owners, probs):
            reranker[key][chunk] = p
            fused[key][chunk] = rc.fusion_weight * p + (1 - rc.fusion_weight) * retriever[key][chunk]
            winners = chunk[np.argsort(-fused[key][chunk], kind="stable")][: min(rc.advance, len(chunk) - 1)]
            rounds[key][winners] += 1
            survivors.setdefault(key, []).extend(int(w) for w in winners)
        # A pool that fitted in one window has had its final; the others play the next round in retriever order.
        pools = {key: sorted(survivors[key]) for key, pool in pools.items() if len(pool) > rc.window_size}
    out = {}
    for key in groups:
        order = np.lexsort((np.arange(len(fused[key])), -fused[key], -rounds[key]))
        out[key] = (reranker[key], rounds[key] + fused[key], order)
    return out


CPU_KINDS = ("features", "pointwise")
"""reranker.kind values whose model scores each candidate alone and reorders by :mod:`eedi.rerank.moves`."""


def load_cpu_reranker(config: Config, model_dir: str | Path, labelled: pd.DataFrame, misconceptions: pd.DataFrame):
    """The trained second stage in ``model_dir`` (a reranker/<name> folder) of reranker.kind features or pointwise.
    ``labelled``: the pairs the candidates' retriever was trained on (which misconceptions count as seen)."""
    if config.reranker.kind == "features":
        return FeatureReranker(model_dir, labelled, misconceptions)
    return PointwiseReranker(model_dir, labelled, misconceptions, config)


def rerank(
    config: Config,
    model_path: str | Path,
    candidates: pd.DataFrame,
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    backend: str | None = None,
    scorer=None,
) -> pd.DataFrame:
    """Rerank each pair's top ``reranker.depth`` candidates with the reranker at ``model_path`` (reranker.kind
    features or pointwise: :func:`load_cpu_reranker`, ``scorer`` one already loaded with its seen labels).

    Returns the candidate rows (all of them) plus ``reranker_score`` (mean label probability
    over the candidate's sliding windows, or its probability in the last tournament window it
    played; NaN below ``depth``), ``final_score`` (sliding: fused score; tournament: rounds won
    + fused score; NaN below depth) and ``final_rank`` (0-based; candidates below ``depth``
    keep their retriever rank). ``scorer`` reuses an already built engine.
    """
    rc = config.reranker
    missing = [c for c in ("QuestionId_Answer", "rank", "MisconceptionId", "score") if c not in candidates.columns]
    if missing:
        raise KeyError(f"candidates table lacks column(s) {missing}")
    if rc.kind in CPU_KINDS:
        if scorer is None:
            # The candidates' retriever was trained on every labelled training pair (infer, the Kaggle notebook).
            labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
            scorer = load_cpu_reranker(config, model_path, labelled, misconceptions)
        return scorer.rerank(config, candidates, pairs)
    pair_rows = pair_lookup(pairs)
    unknown = sorted(set(candidates["QuestionId_Answer"]) - set(pair_rows))
    if unknown:
        raise KeyError(f"{len(unknown)} candidate pair(s) are not in pairs.parquet, e.g. {unknown[:3]}")
    names = misconception_names(misconceptions)
    unknown_ids = sorted(set(candidates["MisconceptionId"].astype(int)) - set(names))
    if unknown_ids:
        raise KeyError(f"candidate MisconceptionId(s) {unknown_ids[:5]} are not in misconceptions.parquet")
    ordered = candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable").reset_index(drop=True)
    position = ordered.groupby("QuestionId_Answer", sort=False).cumcount().to_numpy()
    groups = {key: grp.head(rc.depth) for key, grp in ordered.groupby("QuestionId_Answer", sort=False)}
    own = scorer is None
    if own:
        scorer = make_scorer(model_path, backend or rc.backend, config)
    score = _WindowScorer(scorer, pair_rows, names, rc)
    t0 = time.time()
    try:
        results = (_rerank_sliding if rc.scheme == "sliding" else _rerank_tournament)(groups, score, rc)
    finally:
        if own:
            scorer.close()
    log.info("reranked %d pairs (depth %d, %s) in %.1fs", len(groups), rc.depth, rc.scheme, time.time() - t0)
    out = ordered.copy()
    out["reranker_score"] = np.nan
    out["final_score"] = np.nan
    # Below depth: the retriever's order, after the reranked block (which fills places 0..depth-1).
    out["final_rank"] = position
    for key, top in groups.items():
        reranker, final, order = results[key]
        index = top.index.to_numpy()
        out.loc[index, "reranker_score"] = reranker
        out.loc[index, "final_score"] = final
        new_rank = np.empty(len(order), dtype=np.int64)
        new_rank[order] = np.arange(len(order))
        out.loc[index, "final_rank"] = new_rank
    return out.sort_values(["QuestionId_Answer", "final_rank"], kind="stable").reset_index(drop=True)
