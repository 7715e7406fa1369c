"""The learning-to-rank reranker (``reranker.kind: features``): LightGBM ``lambdarank`` over the features of
:mod:`eedi.rerank.features`, one ranking group per (question, wrong answer) pair.

Its training rows must be scored by a retriever that never saw them, or the retrieval score of the right
misconception is inflated on training rows and the model learns to trust it more than it should on new
questions. The stage therefore trains fold k's model on the *validation* candidates of the other folds in
``folds.use`` (each scored by its own fold's retriever), and the model for the submission on the validation
candidates of every used fold.

What the model may move within each pair's top ``reranker.depth`` is ``reranker.features.move``
(:mod:`eedi.rerank.moves`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eedi.config import Config
from eedi.layout import LTR_MODEL_FILE
from eedi.rerank.features import FEATURES, LabelStats, candidate_features
from eedi.rerank.moves import rerank_top, top_candidates


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

        def score(top: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
            features = candidate_features(top, pairs, self.stats)
            model = self.booster.predict(features[FEATURES], num_threads=config.runtime.num_threads or 0)
            return model, features["seen"].to_numpy() > 0

        return rerank_top(candidates, rc.depth, rc.features, score)
