"""Reranking the same validation candidates with the unquantized and quantized rerankers: MAP@25, agreement, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from eedi.config import Config
from eedi.evaluation.metrics import fold_metrics
from eedi.quantize.methods import _free_memory, weights_bytes
from eedi.rerank.schemes import rerank
from eedi.rerank.scoring import make_scorer

# --------------------------------------------------------------------------- measurement


class TimedScorer:
    """Wraps a reranker label scorer, timing its forward passes and counting the windows it scores."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.tokenizer = scorer.tokenizer
        self.seconds = 0.0
        self.windows = 0

    def label_logprobs(self, prompt_ids, label_ids) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.scorer.label_logprobs(prompt_ids, label_ids)
        self.seconds += time.perf_counter() - t0
        self.windows += len(prompt_ids)
        return out


def top_choices(reranked: pd.DataFrame) -> pd.Series:
    """Per pair, the candidate with the highest reranker score (ties: the better retriever rank)."""
    scored = reranked.dropna(subset=["reranker_score"]).sort_values(
        ["QuestionId_Answer", "reranker_score", "rank"], ascending=[True, False, True], kind="stable"
    )
    return scored.drop_duplicates("QuestionId_Answer").set_index("QuestionId_Answer")["MisconceptionId"]


def top1_agreement(reference: pd.DataFrame, other: pd.DataFrame) -> float:
    """Share of pairs whose top reranker choice is the same in both tables."""
    a, b = top_choices(reference), top_choices(other)
    keys = a.index.intersection(b.index)
    return float((a[keys] == b[keys]).mean()) if len(keys) else float("nan")


def score_mae(reference: pd.DataFrame, other: pd.DataFrame) -> float:
    """Mean absolute difference of the reranker scores (label probabilities) of the same candidates."""
    key = ["QuestionId_Answer", "MisconceptionId"]
    both = reference[key + ["reranker_score"]].merge(other[key + ["reranker_score"]], on=key).dropna()
    return float((both["reranker_score_x"] - both["reranker_score_y"]).abs().mean())


def measure(
    config: Config,
    model_dir: Path,
    candidates: pd.DataFrame,
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    seen: set[int],
) -> tuple[dict, pd.DataFrame]:
    """Load ``model_dir`` with ``quantize.backend``, rerank ``candidates``; ranking metrics + seconds per window."""

    engine = make_scorer(model_dir, config.quantize.backend, config)
    # One untimed pair first: one-off costs (transformers unpacks compressed-tensors weights on the first
    # forward; CUDA loads its kernels on first use) would otherwise be charged to whichever model goes first.
    first = candidates["QuestionId_Answer"].iloc[0]
    rerank(
        config, model_dir, candidates[candidates["QuestionId_Answer"] == first], pairs, misconceptions, scorer=engine
    )
    scorer = TimedScorer(engine)
    reranked = rerank(config, model_dir, candidates, pairs, misconceptions, scorer=scorer)
    metrics = fold_metrics(reranked, pairs, "final_rank", seen, config.evaluation.unseen_share)
    metrics.update(
        windows=scorer.windows,
        seconds_per_window=scorer.seconds / max(scorer.windows, 1),
        size_bytes=weights_bytes(model_dir),
    )
    del scorer, engine
    _free_memory()
    return metrics, reranked


def eval_candidates(candidates: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """The validation rows of a fold's candidates, limited to a seeded random subset of ``max_pairs`` pairs."""
    val = candidates[candidates["part"] == "val"]
    keys = np.array(sorted(val["QuestionId_Answer"].unique()))
    if max_pairs is not None and len(keys) > max_pairs:
        keys = np.random.default_rng(seed).choice(keys, size=max_pairs, replace=False)
        val = val[val["QuestionId_Answer"].isin(set(keys))]
    return val
