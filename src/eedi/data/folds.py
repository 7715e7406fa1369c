"""GroupKFold by question (questions that share a misconception stay together) and the train/validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from eedi.config import FoldsConfig

# --------------------------------------------------------------------------- folds


def assign_folds(pairs: pd.DataFrame, cfg: FoldsConfig) -> pd.DataFrame:
    """Assign each training question to a fold with scikit-learn's GroupKFold.

    mode=group: groups are questions, shuffled with the seed (same seed -> same folds).
    mode=unseen: a share of misconceptions is held out; every question that carries a
    held-out misconception is merged into one group with the other questions carrying it,
    so the whole group lands in one fold and that misconception never occurs in the fold's
    training part. This raises the unseen share of validation, like the competition's test.
    """

    train = pairs[pairs["split"] == "train"]
    qids = np.array(sorted(train["QuestionId"].unique()), dtype=np.int64)
    if len(qids) < cfg.n_splits:
        raise ValueError(f"folds.n_splits={cfg.n_splits} but only {len(qids)} training questions")
    group_of = {int(q): int(q) for q in qids}
    if cfg.mode == "unseen":
        rng = np.random.default_rng(cfg.seed)
        labelled = train.dropna(subset=["MisconceptionId"])
        mids = np.array(sorted(labelled["MisconceptionId"].astype(int).unique()))
        held = set(rng.choice(mids, size=int(round(cfg.unseen_share * len(mids))), replace=False).tolist())
        # union-find over questions linked by a held-out misconception
        parent = {int(q): int(q) for q in qids}

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for mid, grp in labelled.groupby("MisconceptionId"):
            if int(mid) in held:
                members = [int(q) for q in grp["QuestionId"].unique()]
                for other in members[1:]:
                    parent[find(other)] = find(members[0])
        group_of = {q: find(q) for q in parent}
    groups = np.array([group_of[int(q)] for q in qids])
    splitter = GroupKFold(n_splits=cfg.n_splits, shuffle=True, random_state=cfg.seed)
    fold = np.empty(len(qids), dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(qids, groups=groups)):
        fold[val_idx] = k
    return pd.DataFrame({"QuestionId": qids, "fold": fold})


def fold_report(pairs: pd.DataFrame, folds: pd.DataFrame) -> dict[str, dict]:
    """Per fold: validation pairs, labelled pairs, and how many have a misconception unseen in training."""
    train = pairs[(pairs["split"] == "train")].merge(folds, on="QuestionId")
    labelled = train.dropna(subset=["MisconceptionId"])
    report = {}
    for k in sorted(folds["fold"].unique()):
        val = labelled[labelled["fold"] == k]
        seen = set(labelled.loc[labelled["fold"] != k, "MisconceptionId"].astype(int))
        unseen = int((~val["MisconceptionId"].astype(int).isin(seen)).sum())
        report[f"fold_{k}"] = {
            "val_questions": int(train.loc[train["fold"] == k, "QuestionId"].nunique()),
            "val_pairs": int((train["fold"] == k).sum()),
            "val_labelled": int(len(val)),
            "val_unseen": unseen,
            "unseen_share": round(unseen / max(len(val), 1), 4),
        }
    return report


def train_val_split(pairs: pd.DataFrame, folds: pd.DataFrame, fold: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled training pairs for ``fold`` and its validation pairs. fold=None: everything is training."""
    train = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
    train = train.merge(folds, on="QuestionId", how="left")
    if fold is None:
        return train.reset_index(drop=True), train.iloc[0:0]
    return (train[train["fold"] != fold].reset_index(drop=True), train[train["fold"] == fold].reset_index(drop=True))
