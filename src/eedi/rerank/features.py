"""Features of (pair, candidate) rows for the learning-to-rank reranker (``reranker.kind: features``).

Everything here is computed from what every path already has: the retriever's candidates (their score
already holds the label memory and the unseen prior), the query's construct and subject, and the labelled
training pairs. No model is loaded, so infer, serve and the Kaggle notebook compute the same features in
well under a second.

The labelled pairs must be those the retriever that wrote the candidates was trained on: for a validation
fold, the fold's training part; at infer, every labelled pair. A feature computed from pairs the retriever
never saw, or from the query's own label, would differ between training rows and test rows.

Per candidate, within its pair's top ``depth``:

* retrieval: the score, its rank, the gap to the pair's best score, its z-score within the pair, and its
  rank among the candidates of its own kind (seen or unseen);
* labels: whether any training pair carries it, log(1 + count), how many of those share the query's
  construct and its subject, and the construct's share;
* text: TF-IDF cosine of the query and the misconception's name, and the TF-IDF label memory (the best
  cosine between the query and a training query labelled with the candidate), each with its rank in the pair;
* pair context: the pair's best score and how many of its candidates are seen.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

FEATURES = [
    "score",
    "rank",
    "gap",
    "z",
    "rank_in_kind",
    "seen",
    "log_n_label",
    "n_construct",
    "n_subject",
    "construct_share",
    "tfidf_name",
    "tfidf_name_rank",
    "tfidf_memory",
    "tfidf_memory_rank",
    "top_score",
    "n_seen_in_pair",
]


def _key(value) -> object:
    """Construct and subject ids as read from parquet (float with NaN, or int) -> a hashable key, None if missing."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else int(value)


class LabelStats:
    """What the labelled training pairs say about each misconception, and the TF-IDF space of the texts."""

    def __init__(self, labelled: pd.DataFrame, misconceptions: pd.DataFrame):
        from sklearn.feature_extraction.text import TfidfVectorizer

        ids = labelled["MisconceptionId"].astype(int).to_numpy()
        self.n_label = Counter(ids.tolist())
        constructs = [_key(v) for v in labelled["ConstructId"]]
        subjects = [_key(v) for v in labelled["SubjectId"]]
        self.n_construct = Counter(zip(constructs, ids.tolist()))
        self.n_subject = Counter(zip(subjects, ids.tolist()))
        self.construct_total = Counter(constructs)
        names = misconceptions["MisconceptionName"].astype(str).tolist()
        queries = labelled["QueryText"].astype(str).tolist()
        # Word 1-2 grams, sublinear tf: the TF-IDF baseline of benchmarks/real_data.py.
        self.tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1).fit(names + queries)
        self.name_vectors = self.tfidf.transform(names)
        self.name_row = {int(m): i for i, m in enumerate(misconceptions["MisconceptionId"].astype(int))}
        self.query_vectors = self.tfidf.transform(queries)
        rows: dict[int, list[int]] = {}
        for i, m in enumerate(ids.tolist()):
            rows.setdefault(m, []).append(i)
        self.rows_of = {m: np.asarray(r) for m, r in rows.items()}


def _rank_within(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """0-based descending rank of each value within its pair (pairs are consecutive runs starting at ``starts``)."""
    out = np.empty(len(values), dtype=np.float64)
    bounds = [*starts.tolist(), len(values)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        order = np.argsort(-values[a:b], kind="stable")
        out[a + order] = np.arange(b - a)
    return out


def candidate_features(top: pd.DataFrame, pairs: pd.DataFrame, stats: LabelStats) -> pd.DataFrame:
    """``top``: each pair's top-``depth`` candidates (QuestionId_Answer, rank, MisconceptionId, score), rows of
    one pair consecutive and in rank order. ``pairs``: those pairs' rows (QueryText, ConstructId, SubjectId).
    Returns one row of :data:`FEATURES` per candidate row, index aligned with ``top``."""
    lookup = pairs.drop_duplicates("QuestionId_Answer").set_index("QuestionId_Answer")
    keys = top["QuestionId_Answer"].to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    pair_keys = keys[starts]
    query = lookup.loc[pair_keys]
    ids = top["MisconceptionId"].astype(int).to_numpy()
    score = top["score"].to_numpy(dtype=np.float64)
    pair_of_row = np.repeat(np.arange(len(starts)), lengths)

    top_score = np.maximum.reduceat(score, starts)[pair_of_row]
    mean = np.add.reduceat(score, starts)[pair_of_row] / lengths[pair_of_row]
    var = np.add.reduceat((score - mean) ** 2, starts)[pair_of_row] / lengths[pair_of_row]
    seen = np.array([stats.n_label.get(m, 0) > 0 for m in ids], dtype=np.float64)

    constructs = [_key(v) for v in query["ConstructId"]]
    subjects = [_key(v) for v in query["SubjectId"]]
    n_construct = np.array([stats.n_construct.get((constructs[p], m), 0) for p, m in zip(pair_of_row, ids)], float)
    construct_total = np.array([stats.construct_total.get(constructs[p], 0) for p in pair_of_row], dtype=np.float64)

    query_vectors = stats.tfidf.transform(query["QueryText"].astype(str).tolist())
    name_rows = np.array([stats.name_row[m] for m in ids])
    # Row-wise dot products of unit vectors: cosine of each row's query and its candidate's name.
    tfidf_name = np.asarray(
        query_vectors[pair_of_row].multiply(stats.name_vectors[name_rows]).sum(axis=1), dtype=np.float64
    ).ravel()
    memory_sims = (query_vectors @ stats.query_vectors.T).toarray() if stats.query_vectors.shape[0] else None
    tfidf_memory = np.zeros(len(ids))
    for i, (p, m) in enumerate(zip(pair_of_row, ids)):
        rows = stats.rows_of.get(m)
        if rows is not None and memory_sims is not None:
            tfidf_memory[i] = memory_sims[p, rows].max()

    rank_in_kind = np.empty(len(ids))
    for a, n in zip(starts, lengths):
        for kind in (0.0, 1.0):
            mask = np.flatnonzero(seen[a : a + n] == kind)
            rank_in_kind[a + mask] = np.arange(len(mask))

    return pd.DataFrame(
        {
            "score": score,
            "rank": top["rank"].to_numpy(dtype=np.float64),
            "gap": top_score - score,
            "z": (score - mean) / np.sqrt(var + 1e-12),
            "rank_in_kind": rank_in_kind,
            "seen": seen,
            "log_n_label": np.log1p([stats.n_label.get(m, 0) for m in ids]),
            "n_construct": n_construct,
            "n_subject": [stats.n_subject.get((subjects[p], m), 0) for p, m in zip(pair_of_row, ids)],
            "construct_share": n_construct / np.maximum(construct_total, 1.0),
            "tfidf_name": tfidf_name,
            "tfidf_name_rank": _rank_within(tfidf_name, starts),
            "tfidf_memory": tfidf_memory,
            "tfidf_memory_rank": _rank_within(tfidf_memory, starts),
            "top_score": top_score,
            "n_seen_in_pair": np.add.reduceat(seen, starts)[pair_of_row],
        },
        index=top.index,
    )[FEATURES]
