"""Candidate windows: training windows (hard and random), sliding windows for scoring,
calibration windows for quantize.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from eedi.config import Config
from eedi.data.artifacts import load_misconceptions, load_pairs
from eedi.data.schema import CANDIDATE_COLUMNS
from eedi.errors import DataError, MissingInputError
from eedi.evaluation.metrics import candidates_to_lists
from eedi.layout import RunLayout, model_name
from eedi.rerank.prompts import misconception_names, pair_lookup, window_prompts

# --------------------------------------------------------------------------- training windows


def training_windows(
    candidates: pd.DataFrame,
    positives: Mapping[str, int],
    window_size: int,
    windows_per_pair: int,
    hard_ratio: float,
    depth: int,
    rng: np.random.Generator,
    corpus_ids: Sequence[int] = (),
    max_windows: int | None = None,
    shuffle: bool = False,
) -> pd.DataFrame:
    """Training windows for the labelled pairs in ``positives`` ({QuestionId_Answer: MisconceptionId}).

    Returns one row per window: ``QuestionId_Answer``, ``kind`` ("hard" | "random"),
    ``candidate_ids`` (MisconceptionIds in prompt order) and ``target`` (the positive's index).

    Exactly ``round(hard_ratio * total)`` windows are hard. A hard window is a block of the
    negatives ranked next to the positive, with the positive at its own place (a random offset
    decides where the block starts, so the positive's label varies); for a positive the
    retriever missed, the block is the bottom of the list, where it would rank. A random window
    samples negatives from the top ``depth``. Either way a missed positive goes to a random
    position. Pairs without retrieved candidates (e.g. synthetic rows the index did not cover)
    get random windows over ``corpus_ids``. ``shuffle`` then permutes every window, so the
    label position says nothing about the answer.
    """
    lists = candidates_to_lists(candidates) if len(candidates) else {}
    keys = sorted(positives)
    total = len(keys) * windows_per_pair
    n_hard = int(round(hard_ratio * total))
    kinds = np.array(["hard"] * n_hard + ["random"] * (total - n_hard))
    rng.shuffle(kinds)
    corpus = np.asarray(sorted(corpus_ids), dtype=np.int64)
    m_max = window_size - 1
    rows = []
    for i, key in enumerate(keys):
        positive = int(positives[key])
        top = lists.get(key)
        for j in range(windows_per_pair):
            kind = kinds[i * windows_per_pair + j]
            if top is None:
                pool = corpus[corpus != positive]
                negatives = rng.choice(pool, size=min(m_max, len(pool)), replace=False).tolist()
                slot = int(rng.integers(0, len(negatives) + 1))
                kind = "random"
            else:
                top = top[:depth]
                found = positive in top
                p = top.index(positive) if found else len(top)
                pool = [c for c in top if c != positive]
                m = min(m_max, len(pool))
                if kind == "hard":
                    # Start so that the block holds the negatives nearest the positive's rank p.
                    low, high = max(0, p - m), min(p, len(pool) - m)
                    start = int(rng.integers(low, high + 1))
                    negatives = pool[start : start + m]
                    slot = p - start if found else int(rng.integers(0, m + 1))
                else:
                    picked = np.sort(rng.choice(len(pool), size=m, replace=False))
                    negatives = [pool[x] for x in picked]
                    slot = int((picked < p).sum()) if found else int(rng.integers(0, m + 1))
            window = list(negatives)
            window.insert(slot, positive)
            if shuffle:
                window = [window[x] for x in rng.permutation(len(window))]
                slot = window.index(positive)
            rows.append(
                {"QuestionId_Answer": key, "kind": str(kind), "candidate_ids": [int(c) for c in window], "target": slot}
            )
    windows = pd.DataFrame(rows, columns=["QuestionId_Answer", "kind", "candidate_ids", "target"])
    if max_windows is not None and len(windows) > max_windows:
        windows = windows.iloc[np.sort(rng.choice(len(windows), size=max_windows, replace=False))]
    return windows.reset_index(drop=True)


# --------------------------------------------------------------------------- reranking


def sliding_windows(n: int, size: int, stride: int) -> list[list[int]]:
    """Windows of ``size`` positions over ``range(n)`` every ``stride``; the last one ends at ``n``."""
    if n <= size:
        return [list(range(n))] if n else []
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return [list(range(s, s + size)) for s in starts]


# --------------------------------------------------------------------------- stage


def read_candidates(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MissingInputError(path, "index")
    candidates = pd.read_parquet(path)
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(candidates.columns)}", column=missing[0])
    return candidates


def one_list_per_pair(candidates: pd.DataFrame) -> pd.DataFrame:
    """Rows of several folds' candidate tables, keeping one list per pair: its out-of-fold list (part="val")
    where one exists, else the list of the lowest fold."""
    in_sample = candidates["part"] != "val"
    choice = (
        candidates.assign(_in_sample=in_sample)
        .sort_values(["_in_sample", "fold"], kind="stable")
        .drop_duplicates("QuestionId_Answer")[["QuestionId_Answer", "fold"]]
    )
    return candidates.merge(choice, on=["QuestionId_Answer", "fold"])


def calibration_prompts(config: Config, fold: int | None, n: int, max_length: int) -> list[str]:
    """``n`` reranker prompts of training windows (fold ``fold``'s part="train"; None: every fold in
    folds.use), for GPTQ/AWQ calibration. Prompts longer than ``max_length`` tokens keep their end."""
    layout = RunLayout(config.run_dir)
    folds = config.folds.use if fold is None else [fold]
    candidates = pd.concat([read_candidates(layout.candidates(model_name(k))) for k in folds])
    candidates = one_list_per_pair(candidates[candidates["part"] == "train"])
    pairs, misconceptions = load_pairs(layout.root), load_misconceptions(layout.root)
    labels = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"]
    positives = {k: int(labels[k]) for k in set(candidates["QuestionId_Answer"]) if k in labels.index}
    rc = config.reranker
    rng = np.random.default_rng(config.seed)
    windows = training_windows(
        candidates,
        positives,
        rc.window_size,
        1,
        rc.hard_ratio,
        rc.depth,
        rng,
        max_windows=n,
        shuffle=rc.shuffle_windows,
    )
    tokenizer = AutoTokenizer.from_pretrained(rc.backbone)
    prompts = window_prompts(windows, pair_lookup(pairs), misconception_names(misconceptions), tokenizer)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [p if len(x) <= max_length else tokenizer.decode(x[-max_length:]) for p, x in zip(prompts, ids)]
