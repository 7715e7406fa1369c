"""The learning-to-rank reranker (``reranker.kind: features``): LightGBM ``lambdarank`` over the features of
:mod:`eedi.rerank.features`, one ranking group per (question, wrong answer) pair.

Its training rows must be scored by a retriever that never saw them, or the retrieval score of the right
misconception is inflated on training rows and the model learns to trust it more than it should on new
questions. The stage therefore trains fold k's model on the *validation* candidates of the other folds in
``folds.use`` (each scored by its own fold's retriever), and the model for the submission on the validation
candidates of every used fold.

What the model may move (``reranker.features.move``), within each pair's top ``reranker.depth``:

* ``all``: the candidates are ordered by the model's score;
* ``seen``: only the candidates seen in training are reordered, among the places the retriever gave them; the
  unseen ones keep their ranks (the retriever's unseen prior and its test-time calibration stay as they are);
* ``top_k``: only the retriever's first ``top_k`` are reordered among themselves;
* ``blend``: ordered by ``blend_weight`` x the model's score + (1 - ``blend_weight``) x the retriever's score, both
  min-max scaled within the pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eedi.config import Config
from eedi.layout import LTR_MODEL_FILE
from eedi.rerank.features import FEATURES, LabelStats, candidate_features


def top_candidates(candidates: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Each pair's first ``depth`` candidates, pairs consecutive and in rank order (original index kept)."""
    ordered = candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable")
    return ordered[ordered.groupby("QuestionId_Answer", sort=False).cumcount() < depth]


def _minmax(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def training_table(
    config: Config, candidates: pd.DataFrame, pairs: pd.DataFrame, labelled: pd.DataFrame, misconceptions
) -> pd.DataFrame:
    """Features, label (the pair's own misconception) and group weight of one fold's validation candidates.
    ``labelled``: the training part of the retriever that scored them. Pairs whose misconception is not in
    their top ``reranker.depth`` carry no ranking signal and are dropped."""
    top = top_candidates(candidates, config.reranker.depth)
    table = candidate_features(top, pairs, LabelStats(labelled, misconceptions))
    truth = pairs.drop_duplicates("QuestionId_Answer").set_index("QuestionId_Answer")["MisconceptionId"]
    own = truth.loc[top["QuestionId_Answer"]].astype(int).to_numpy()
    table["label"] = (top["MisconceptionId"].to_numpy() == own).astype(int)
    table["group"] = top["QuestionId_Answer"].to_numpy()
    table["unseen_pair"] = ~np.isin(own, labelled["MisconceptionId"].astype(int).unique())
    found = table.groupby("group", sort=False)["label"].transform("max") > 0
    return table[found.to_numpy()]


def group_weights(table: pd.DataFrame, unseen_share: float | None) -> np.ndarray:
    """Per-row weight: every row of a pair carries its pair's weight. ``unseen_share`` (the test mix): pairs of
    unseen misconceptions weigh ``unseen_share`` of the total and seen ones the rest, so the training
    objective is the mix the leaderboard scores. None: every pair weighs the same."""
    if unseen_share is None:
        return np.ones(len(table))
    first = table.drop_duplicates("group")
    unseen = float(first["unseen_pair"].mean())
    if unseen in (0.0, 1.0):
        return np.ones(len(table))
    return np.where(table["unseen_pair"], unseen_share / unseen, (1 - unseen_share) / (1 - unseen))


def fit(config: Config, table: pd.DataFrame, out_dir: Path) -> dict:
    """Train LightGBM lambdarank on ``table`` (from :func:`training_table`), save it to ``out_dir/lightgbm.txt``
    (temp file, then rename), return what it learned: pairs, rows, and MAP@25 on its own rows by iteration."""
    import lightgbm

    from eedi.fileio import atomic_path

    fc = config.reranker.features
    if table.empty:
        raise ValueError("no training pair has its misconception among its top reranker.depth candidates")
    sizes = table.groupby("group", sort=False).size().to_numpy()
    share = config.evaluation.unseen_share if fc.test_mix_weighting else None
    data = lightgbm.Dataset(
        table[FEATURES], label=table["label"], group=sizes, weight=group_weights(table, share), free_raw_data=False
    )
    params = {
        "objective": "lambdarank",
        "metric": "map",
        "eval_at": [25],
        "learning_rate": fc.learning_rate,
        "num_leaves": fc.num_leaves,
        "min_data_in_leaf": fc.min_child_samples,
        "feature_fraction": 0.9,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": config.runtime.num_threads or 0,
        "verbose": -1,
    }
    curve: dict = {}
    booster = lightgbm.train(
        params,
        data,
        num_boost_round=fc.n_estimators,
        valid_sets=[data],
        valid_names=["train"],
        callbacks=[lightgbm.record_evaluation(curve)],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / LTR_MODEL_FILE) as tmp:
        booster.save_model(str(tmp))
    trace = curve["train"]["map@25"]
    checkpoints = sorted({0, len(trace) // 4, len(trace) // 2, len(trace) - 1})
    return {
        "pairs": int(len(sizes)),
        "rows": int(len(table)),
        "unseen_pairs": int(table.drop_duplicates("group")["unseen_pair"].sum()),
        "train_map@25_by_iteration": {str(i + 1): round(float(trace[i]), 4) for i in checkpoints},
    }


class FeatureReranker:
    """A trained booster and the label statistics of the pairs the candidates' retriever was trained on."""

    def __init__(self, model_dir: str | Path, labelled: pd.DataFrame, misconceptions: pd.DataFrame):
        import lightgbm

        path = Path(model_dir) / LTR_MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no feature reranker there (run train-reranker)")
        self.booster = lightgbm.Booster(model_file=str(path))
        self.stats = LabelStats(labelled, misconceptions)

    def close(self) -> None:
        """Nothing to release (the scorers of the listwise reranker hold engines)."""

    def rerank(self, config: Config, candidates: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
        """The candidate rows (all of them) plus ``reranker_score`` (the model's score; NaN below depth),
        ``final_score`` (what the move mode orders by; NaN below depth) and ``final_rank`` (0-based), as
        :func:`eedi.rerank.schemes.rerank` returns them."""
        rc = config.reranker
        ordered = candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable").reset_index(drop=True)
        out = ordered.assign(
            reranker_score=np.nan,
            final_score=np.nan,
            final_rank=ordered.groupby("QuestionId_Answer", sort=False).cumcount().to_numpy(),
        )
        top = top_candidates(ordered, rc.depth)
        if top.empty:
            return out
        features = candidate_features(top, pairs, self.stats)
        model = self.booster.predict(features[FEATURES], num_threads=config.runtime.num_threads or 0)
        keys = top["QuestionId_Answer"].to_numpy()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        bounds = [*starts.tolist(), len(keys)]
        final_score = np.empty(len(top))
        final_rank = np.empty(len(top), dtype=np.int64)
        seen = features["seen"].to_numpy() > 0
        retriever = top["score"].to_numpy(dtype=np.float64)
        fc = rc.features
        for a, b in zip(bounds[:-1], bounds[1:]):
            order, final_score[a:b] = move(fc.move, model[a:b], retriever[a:b], seen[a:b], fc.top_k, fc.blend_weight)
            final_rank[a + order] = np.arange(b - a)
        index = top.index.to_numpy()
        out.loc[index, "reranker_score"] = model
        out.loc[index, "final_score"] = final_score
        out.loc[index, "final_rank"] = final_rank
        return out.sort_values(["QuestionId_Answer", "final_rank"], kind="stable").reset_index(drop=True)


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
    raise ValueError(f"unknown reranker.features.move {mode!r}")
