"""Retrieval: encode queries, exact FAISS inner-product search over the misconceptions, top-k candidates.

:class:`CandidateRetriever` is the one retrieval path: the index stage, the infer stage, the Kaggle
notebook and the service all call it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import pandas as pd

from eedi.config import Config
from eedi.data.schema import CANDIDATE_COLUMNS
from eedi.errors import ConfigError, MissingInputError
from eedi.fileio import atomic_path, read_json
from eedi.layout import RunLayout
from eedi.retrieval.model import encode_corpus, encode_queries

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class FaissIndex:
    """A FAISS inner-product index and the MisconceptionId of each of its rows."""

    index: faiss.Index
    ids: np.ndarray

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: np.ndarray,
        kind: Literal["exact", "ivf"] = "exact",
        nlist: int = 64,
        nprobe: int = 8,
        use_gpu: bool | Literal["auto"] = "auto",
    ) -> FaissIndex:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if embeddings.ndim != 2 or len(embeddings) != len(ids) or not len(ids):
            raise ValueError(f"need one embedding per id, got {embeddings.shape} for {len(ids)} ids")
        dim = embeddings.shape[1]
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            # FAISS wants >= 39 training points per list; fewer lists than that only warn and cluster badly.
            lists = max(1, min(nlist, len(ids) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(embeddings)
            index.nprobe = min(nprobe, lists)
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        if use_gpu is True or (use_gpu == "auto" and gpu_available()):
            if not gpu_available():
                raise ConfigError(
                    "index.use_gpu=true but faiss has no GPU support or sees no GPU "
                    "(pip install faiss-gpu-cu12, or set index.use_gpu=auto)"
                )
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(embeddings)
        return cls(index, ids)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, MisconceptionIds), each (n_queries, min(k, size)), best first.

        An index built with a prior (:func:`with_prior`) has one dimension more than the queries: each
        query gets a constant 1 there, so its score is cosine + the misconception's prior."""
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 2 and queries.shape[1] == self.index.d - 1:
            queries = np.hstack([queries, np.ones((len(queries), 1), dtype=np.float32)])
        scores, rows = self.index.search(queries, k)
        if (rows < 0).any():  # IVF with too few probed lists can come back short
            raise ConfigError(f"the index returned fewer than {k} results; raise index.nprobe")
        return scores, self.ids[rows]

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.faiss) and ``path`` with suffix .ids.npy, each atomically."""
        path = Path(path)
        index = self.index
        if hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex):
            index = faiss.index_gpu_to_cpu(index)
        with atomic_path(ids_path(path)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, self.ids)
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        return path

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool | Literal["auto"] = "auto") -> FaissIndex:
        path = Path(path)
        if not path.is_file() or not ids_path(path).is_file():
            raise MissingInputError(f"index {path} or its id map {ids_path(path)}", "index")
        index = faiss.read_index(str(path))
        if use_gpu is True or (use_gpu == "auto" and gpu_available()):
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        return cls(index, np.load(ids_path(path)))


def ids_path(index_path: Path) -> Path:
    return Path(index_path).with_suffix(".ids.npy")


def candidates_frame(keys: list[str], scores: np.ndarray, ids: np.ndarray, fold: int, part: str) -> pd.DataFrame:
    """Long candidates table from (n, k) search results."""
    n, k = ids.shape
    return pd.DataFrame(
        {
            "QuestionId_Answer": np.repeat(np.asarray(keys, dtype=object), k),
            "rank": np.tile(np.arange(k, dtype=np.int64), n),
            "MisconceptionId": ids.reshape(-1).astype(np.int64),
            "score": scores.reshape(-1).astype(np.float32),
            "fold": np.int64(fold),
            "part": part,
        },
        columns=CANDIDATE_COLUMNS,
    )


def unseen_prior(corpus_ids: np.ndarray, seen_ids: Iterable[int], boost: float) -> np.ndarray:
    """``boost`` for every misconception without a labelled training pair, 0 for the others.

    A fine-tuned retriever ranks the misconceptions it was trained on above the ones it never saw,
    while a test set of new questions is rich in the latter (a third of each validation fold here,
    most of the competition's hidden test): the prior evens that out (``index.unseen_boost``)."""
    seen = np.isin(np.asarray(corpus_ids, dtype=np.int64), np.fromiter((int(i) for i in seen_ids), dtype=np.int64))
    return np.where(seen, 0.0, float(boost)).astype(np.float32)


def with_prior(embeddings: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """Document embeddings with the prior as one extra dimension (inner product = cosine + prior)."""
    if prior is None or not np.any(prior):
        return embeddings
    return np.hstack([embeddings, prior.reshape(-1, 1).astype(np.float32)])


def top_k_from_scores(scores: np.ndarray, corpus_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a dense (n, corpus) score matrix, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(
        part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable"), axis=1
    )
    return np.take_along_axis(scores, order, axis=1), corpus_ids[order]


class EmbeddingStore:
    """Texts and their embeddings by one retriever model: the misconceptions (documents) and the queries.

    The index stage records every text it embeds and saves the store beside the index, under a key that names
    the model (its training fingerprint) and the encoding settings; ``eedi serve`` loads it instead of embedding
    the corpus and the label memory's training queries again. A store under another key is never used."""

    KINDS = ("documents", "queries")

    def __init__(self, key: str):
        self.key = key
        self.vectors: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in self.KINDS}

    def lookup(self, kind: str, texts: Sequence[str]) -> np.ndarray | None:
        """The embeddings of ``texts`` when every one is stored, else None."""
        known = self.vectors[kind]
        if not texts or any(t not in known for t in texts):
            return None
        return np.stack([known[t] for t in texts])

    def record(self, kind: str, texts: Sequence[str], embeddings: np.ndarray) -> None:
        self.vectors[kind].update(zip(texts, embeddings))

    def save(self, path: str | Path) -> Path:
        arrays: dict[str, np.ndarray] = {"key": np.array(self.key)}
        for kind, known in self.vectors.items():
            arrays[f"{kind}_texts"] = np.array(list(known), dtype=str)
            arrays[kind] = np.stack(list(known.values())) if known else np.empty((0, 0), np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, key: str) -> EmbeddingStore | None:
        """The store at ``path`` if it was made under ``key``; None when it is missing or made by another model."""
        if not Path(path).is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            store = cls(key)
            for kind in cls.KINDS:
                store.record(kind, data[f"{kind}_texts"].tolist(), data[kind])
        return store


def embedding_key(model_dir: str | Path, encode_batch_size: int) -> str:
    """What a stored embedding depends on: the model's training fingerprint (its train_info.json) and the batch
    it was encoded in (padding per batch moves the last float bits)."""
    info = read_json(RunLayout.train_info(Path(model_dir).parent), default={}) or {}
    return f"{info.get('fingerprint', 'untrained')}-{encode_batch_size}"


class CandidateRetriever:
    """The one retrieval path (index stage, infer stage, Kaggle notebook) for one trained retriever model.

    Score of misconception m for a query q (all vectors unit length)::

        score(q, m) = cos(q, m) + prior(m) + knn_weight * max(0, memory(q, m) - cos(q, m))

    * ``prior(m)`` = ``index.unseen_boost`` when m has no labelled training pair, else 0
      (:func:`unseen_prior`; FAISS gets it as one extra dimension of the misconception vectors);
    * ``memory(q, m)`` = the highest cosine between q and a *training query* labelled m, over q's
      ``index.knn_neighbours`` nearest training queries (a second FAISS index, the "label memory").
      Questions that share a misconception are often worded alike: the memory recalls the label of a
      near-identical training question directly. It can only raise a score, and only of seen misconceptions.

    ``labelled`` (QuestionId, QueryText, MisconceptionId) are the model's training pairs; None (zero-shot
    use) disables both terms. Exact for ``index.kind=exact``: every misconception the memory can raise is
    rescored, so none outside the FAISS top-k can be missed.

    ``store``: embeddings this model made before (:class:`EmbeddingStore`); the misconceptions and the label
    memory's queries are taken from it when it holds all of them. What is embedded here is recorded in
    ``self.store`` (with ``record_searches`` the searched queries too), for the index stage to save.
    """

    def __init__(
        self,
        model,
        misconceptions: pd.DataFrame,
        config: Config,
        labelled: pd.DataFrame | None = None,
        store: EmbeddingStore | None = None,
        record_searches: bool = False,
    ):
        self.model, self.config = model, config
        self.record_searches = record_searches
        self._encode_queries = encode_queries
        self.batch = config.retriever.encode_batch_size
        self.store = store if store is not None else EmbeddingStore("")
        self.corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
        self.column = {int(m): i for i, m in enumerate(self.corpus_ids)}
        self.documents = self._embed(encode_corpus, "documents", misconceptions["MisconceptionName"].tolist())
        cfg = config.index
        seen = [] if labelled is None else labelled["MisconceptionId"].astype(int).tolist()
        # zero-shot use (no labelled pairs): nothing counts as seen, and neither prior nor calibration applies
        self.unseen = (
            unseen_prior(self.corpus_ids, seen, 1.0)
            if labelled is not None
            else np.zeros(len(self.corpus_ids), np.float32)
        )
        self.calibrated_boost: float | None = None
        self.set_unseen_boost(cfg.unseen_boost)
        self.memory: FaissIndex | None = None
        if labelled is not None and len(labelled) and cfg.knn_weight > 0:
            embeddings = self._embed(encode_queries, "queries", labelled["QueryText"].tolist())
            self.memory = FaissIndex.build(
                embeddings, labelled["MisconceptionId"].to_numpy(np.int64), kind="exact", use_gpu=cfg.use_gpu
            )
            self.memory_questions = labelled["QuestionId"].to_numpy(np.int64)

    def set_unseen_boost(self, boost: float) -> None:
        """Use ``boost`` as the unseen prior from now on (e.g. one calibrated on a run's test rows)."""
        self.prior = np.where(self.unseen, float(boost), 0.0).astype(np.float32)
        self.index = FaissIndex.build(
            with_prior(self.documents, self.prior),
            self.corpus_ids,
            kind=self.config.index.kind,
            nlist=self.config.index.nlist,
            nprobe=self.config.index.nprobe,
            use_gpu=self.config.index.use_gpu,
        )

    def _embed(self, encode, kind: str, texts: list[str]) -> np.ndarray:
        """The stored embeddings of ``texts`` when the store holds every one; else all of them encoded in one
        call, as without a store (so the index stage's outputs do not depend on what was stored before)."""
        stored = self.store.lookup(kind, texts)
        if stored is not None:
            return stored
        embeddings = encode(self.model, texts, self.batch)
        self.store.record(kind, texts, embeddings)
        return embeddings

    def encode(self, query_texts: list[str]) -> np.ndarray:
        """The queries' embeddings: taken from the store when it holds all of them (the index stage searches the
        training queries the label memory has just embedded, in the same order), else encoded in one call."""
        stored = self.store.lookup("queries", query_texts)
        if stored is not None:
            return stored
        queries = self._encode_queries(self.model, query_texts, self.batch)
        if self.record_searches:
            self.store.record("queries", query_texts, queries)
        return queries

    def search(
        self,
        query_texts: list[str],
        question_ids: Sequence[int] | None = None,
        unseen_top1_share: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, MisconceptionIds), each (n, index.top_k), best first. ``question_ids``: the queries' own
        QuestionIds, whose training pairs the memory then skips (candidates for a model's own training pairs
        must not recall their own labels). ``unseen_top1_share``: calibrate the unseen boost on these rows
        (:func:`calibrate_unseen_boost`, the result kept in ``calibrated_boost``) instead of ``unseen_boost``."""
        k = self.config.index.top_k
        if not query_texts:
            return np.empty((0, min(k, len(self.corpus_ids))), np.float32), np.empty((0, 0), np.int64)
        queries = self.encode(query_texts)
        if unseen_top1_share is not None:
            dense = self.dense_scores(queries, question_ids)
            self.calibrated_boost = calibrate_unseen_boost(dense, self.unseen, unseen_top1_share)
            return top_k_from_scores(dense + self.calibrated_boost * self.unseen, self.corpus_ids, k)
        scores, ids = self.index.search(queries, k)
        if self.memory is None:
            return scores, ids
        cfg = self.config.index
        k = ids.shape[1]
        out_scores = np.empty_like(scores)
        out_ids = np.empty_like(ids)
        for i, recalled in enumerate(self._recall(queries, question_ids)):
            pool = np.unique(np.concatenate([ids[i], np.fromiter(recalled, dtype=np.int64, count=len(recalled))]))
            columns = np.array([self.column[int(m)] for m in pool])
            cosine = self.documents[columns] @ queries[i]
            memory = np.array([recalled.get(int(m), -np.inf) for m in pool])
            final = cosine + self.prior[columns] + cfg.knn_weight * np.maximum(0.0, memory - cosine)
            order = np.argsort(-final, kind="stable")[:k]
            out_scores[i], out_ids[i] = final[order], pool[order]
        return out_scores, out_ids

    def dense_scores(self, queries: np.ndarray, question_ids: Sequence[int] | None = None) -> np.ndarray:
        """(n, corpus) score of every misconception for encoded ``queries``: cosine + label memory, no prior.
        Dense is exact and cheap at this corpus size (a test set of ~2,700 pairs x 2,587 is 28 MB)."""
        dense = np.ascontiguousarray(queries, dtype=np.float32) @ self.documents.T
        if self.memory is not None:
            weight = self.config.index.knn_weight
            for i, recalled in enumerate(self._recall(queries, question_ids)):
                if recalled:
                    columns = np.array([self.column[m] for m in recalled])
                    memory = np.fromiter(recalled.values(), dtype=np.float32, count=len(recalled))
                    dense[i, columns] += weight * np.maximum(0.0, memory - dense[i, columns])
        return dense

    def _recall(self, queries: np.ndarray, question_ids: Sequence[int] | None) -> list[dict[int, float]]:
        """Per query, {label: best cosine} over its ``index.knn_neighbours`` nearest training queries
        (those of the query's own question skipped)."""
        assert self.memory is not None
        neighbours = self.config.index.knn_neighbours
        sims, rows = self.memory.index.search(np.ascontiguousarray(queries), min(neighbours + 8, self.memory.size))
        out = []
        for i in range(len(queries)):
            recalled: dict[int, float] = {}
            taken = 0
            for sim, row in zip(sims[i], rows[i]):
                if row < 0 or taken == neighbours:
                    break
                if question_ids is not None and self.memory_questions[row] == question_ids[i]:
                    continue
                taken += 1
                label = int(self.memory.ids[row])
                recalled[label] = max(recalled.get(label, -1.0), float(sim))
            out.append(recalled)
        return out


def calibrate_unseen_boost(scores: np.ndarray, unseen: np.ndarray, top1_share: float) -> float:
    """The boost b for unseen misconceptions at which ``top1_share`` of the rows rank an unseen one first.

    ``scores``: (rows, corpus) scores without any unseen prior; ``unseen``: (corpus,) 0/1 mask. Row i ranks an
    unseen misconception first iff b > gap_i = best seen score - best unseen score, so b is set halfway between
    the m-th and (m+1)-th smallest gap, m = round(share x rows): exactly m rows then flip (ties aside). Uses no
    labels, only the scores of the rows being predicted: the share of unseen misconceptions that a test set
    asks for is a property of the test set (the competition's: about 3 in 4), not of validation folds. 0 when
    every misconception, or none, is seen."""
    if not 0.0 <= top1_share <= 1.0:
        raise ValueError(f"top1_share must lie in [0, 1], got {top1_share}")
    unseen = np.asarray(unseen, dtype=bool)
    if not len(scores) or unseen.all() or not unseen.any():
        return 0.0
    gaps = np.sort(scores[:, ~unseen].max(axis=1) - scores[:, unseen].max(axis=1))
    flips = int(round(top1_share * len(gaps)))
    if flips == 0:
        return float(gaps[0] - 1e-4)
    if flips == len(gaps):
        return float(gaps[-1] + 1e-4)
    return float((gaps[flips - 1] + gaps[flips]) / 2)
