"""Stage 4 (index): FAISS index over the misconceptions, top-K candidates for every pair.

For each fold k in ``folds.use`` the fold's retriever (``retriever/fold_k/model``) embeds
all misconceptions into a FAISS inner-product index (embeddings are L2-normalised, so inner
product = cosine) and retrieves the top ``index.top_k`` for every labelled training pair.

Outputs (under ``run_dir``; schema also in README.md):

* ``index/fold_{k}.faiss`` + ``index/fold_{k}.ids.npy`` - the index and its row -> MisconceptionId map.
* ``candidates/fold_{k}.parquet`` - ``QuestionId_Answer, rank (0-based), MisconceptionId, score, fold,
  part``: part = ``val`` for fold k's own pairs (out-of-fold: the model never trained on them) and
  ``train`` for the pairs it trained on (the reranker trains on those).
* ``candidates/test.parquet`` (when pairs.parquet has test pairs) - same columns, fold = -1,
  part = ``test``: from the full-fit model (``retriever/full``) when it exists, else from the mean
  of the fold models' cosine scores (an ensemble that needs no extra training run).
* ``metrics.json`` gains ``fold_{k}.retriever`` = :func:`eedi.metrics.ranking_metrics` on the
  val part, split by whether the misconception occurs in fold k's training part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from .config import Config
from .io import update_json, write_parquet
from .metrics import ranking_metrics

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["QuestionId_Answer", "rank", "MisconceptionId", "score", "fold", "part"]
FULL = "full"


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class FaissIndex:
    """A FAISS inner-product index and the MisconceptionId of each of its rows."""

    index: "faiss.Index"  # noqa: F821
    ids: np.ndarray

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: np.ndarray, kind: Literal["exact", "ivf"] = "exact",
              nlist: int = 64, nprobe: int = 8, use_gpu: bool | Literal["auto"] = "auto") -> "FaissIndex":
        faiss = _faiss()
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
                raise RuntimeError("index.use_gpu=true but faiss has no GPU support or sees no GPU "
                                   "(pip install faiss-gpu-cu12, or set index.use_gpu=auto)")
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(embeddings)
        return cls(index, ids)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, MisconceptionIds), each (n_queries, min(k, size)), best first."""
        k = min(k, self.size)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if (rows < 0).any():  # IVF with too few probed lists can come back short
            raise RuntimeError(f"the index returned fewer than {k} results; raise index.nprobe")
        return scores, self.ids[rows]

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.faiss) and ``path`` with suffix .ids.npy, each atomically."""
        from .io import atomic_path

        faiss = _faiss()
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
    def load(cls, path: str | Path, use_gpu: bool | Literal["auto"] = "auto") -> "FaissIndex":
        faiss = _faiss()
        path = Path(path)
        if not path.is_file() or not ids_path(path).is_file():
            raise FileNotFoundError(f"index {path} or its id map {ids_path(path)} is missing (run `eedi index`)")
        index = faiss.read_index(str(path))
        if use_gpu is True or (use_gpu == "auto" and gpu_available()):
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        return cls(index, np.load(ids_path(path)))


def ids_path(index_path: Path) -> Path:
    return Path(index_path).with_suffix(".ids.npy")


def candidates_frame(keys: list[str], scores: np.ndarray, ids: np.ndarray, fold: int, part: str) -> pd.DataFrame:
    """Long candidates table from (n, k) search results."""
    n, k = ids.shape
    return pd.DataFrame({
        "QuestionId_Answer": np.repeat(np.asarray(keys, dtype=object), k),
        "rank": np.tile(np.arange(k, dtype=np.int64), n),
        "MisconceptionId": ids.reshape(-1).astype(np.int64),
        "score": scores.reshape(-1).astype(np.float32),
        "fold": np.int64(fold),
        "part": part,
    }, columns=CANDIDATE_COLUMNS)


def top_k_from_scores(scores: np.ndarray, corpus_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a dense (n, corpus) score matrix, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable"),
                               axis=1)
    return np.take_along_axis(scores, order, axis=1), corpus_ids[order]


# --------------------------------------------------------------------------- stage


def _fold_model(run_dir: Path, name: str) -> Path:
    path = run_dir / "retriever" / name / "model"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: run `eedi train-retriever` for {name} first")
    return path


def index_fold(config: Config, fold: int, pairs: pd.DataFrame, folds: pd.DataFrame,
               misconceptions: pd.DataFrame) -> dict:
    """Index + candidates + metrics for one fold."""
    from .data import train_val_split
    from .retriever import encode_corpus, encode_queries, load_encoder
    from .runtime import resolve

    run_dir = Path(config.run_dir)
    model = load_encoder(_fold_model(run_dir, f"fold_{fold}"), resolve(config.runtime))
    batch = config.retriever.encode_batch_size
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    index = FaissIndex.build(encode_corpus(model, misconceptions["MisconceptionName"].tolist(), batch), corpus_ids,
                             kind=config.index.kind, nlist=config.index.nlist, nprobe=config.index.nprobe,
                             use_gpu=config.index.use_gpu)
    index.save(run_dir / "index" / f"fold_{fold}.faiss")

    train, val = train_val_split(pairs, folds, fold)
    if val.empty:
        raise ValueError(f"fold {fold} has no labelled validation pairs")
    parts = []
    for part, frame in (("val", val), ("train", train)):
        scores, ids = index.search(encode_queries(model, frame["QueryText"].tolist(), batch), config.index.top_k)
        parts.append(candidates_frame(frame["QuestionId_Answer"].tolist(), scores, ids, fold, part))
        if part == "val":
            seen = set(train["MisconceptionId"].astype(int))
            actual = val["MisconceptionId"].astype(int).tolist()
            metrics = ranking_metrics(actual, ids.tolist(), seen=[a in seen for a in actual])
    write_parquet(run_dir / "candidates" / f"fold_{fold}.parquet", pd.concat(parts, ignore_index=True))
    update_json(run_dir / "metrics.json", {f"fold_{fold}": {"retriever": metrics}})
    log.info("fold %d: retriever MAP@25 %.4f, recall@25 %.4f (%d val pairs)", fold, metrics["map@25"],
             metrics["recall@25"], metrics["n"])
    return metrics


def test_candidates(config: Config, test: pd.DataFrame, misconceptions: pd.DataFrame) -> str:
    """candidates/test.parquet from the full-fit model, else the fold models' mean cosine. Returns the source."""
    from .retriever import encode_corpus, encode_queries, load_encoder
    from .runtime import resolve

    run_dir = Path(config.run_dir)
    placement = resolve(config.runtime)
    batch = config.retriever.encode_batch_size
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    texts = misconceptions["MisconceptionName"].tolist()
    queries = test["QueryText"].tolist()
    if (run_dir / "retriever" / FULL / "model").is_dir():
        model = load_encoder(_fold_model(run_dir, FULL), placement)
        index = FaissIndex.build(encode_corpus(model, texts, batch), corpus_ids, kind=config.index.kind,
                                 nlist=config.index.nlist, nprobe=config.index.nprobe, use_gpu=config.index.use_gpu)
        index.save(run_dir / "index" / f"{FULL}.faiss")
        scores, ids = index.search(encode_queries(model, queries, batch), config.index.top_k)
        source = FULL
    else:
        # Cosine scores of different fold models are on one scale (all unit vectors), so their mean is a
        # plain ensemble; dense scores are fine at this corpus size (test pairs x 2,587).
        total = np.zeros((len(queries), len(corpus_ids)), dtype=np.float32)
        for fold in config.folds.use:
            model = load_encoder(_fold_model(run_dir, f"fold_{fold}"), placement)
            total += encode_queries(model, queries, batch) @ encode_corpus(model, texts, batch).T
        scores, ids = top_k_from_scores(total / len(config.folds.use), corpus_ids, config.index.top_k)
        source = "mean of folds " + ",".join(map(str, config.folds.use))
    write_parquet(run_dir / "candidates" / "test.parquet",
                  candidates_frame(test["QuestionId_Answer"].tolist(), scores, ids, -1, "test"))
    return source


def run(config: Config) -> dict:
    """Stage 4. Returns per-fold retriever metrics for the manifest."""
    from .data import load_folds, load_misconceptions, load_pairs

    run_dir = Path(config.run_dir)
    pairs, folds, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    summary: dict = {}
    for fold in config.folds.use:
        metrics = index_fold(config, fold, pairs, folds, misconceptions)
        summary[f"fold_{fold}"] = {k: metrics[k] for k in ("map@25", "recall@25", "n")}
    test = pairs[pairs["split"] == "test"]
    if len(test):
        summary["test_candidates"] = test_candidates(config, test, misconceptions)
    return summary


def outputs(config: Config) -> list[Path]:
    run_dir = Path(config.run_dir)
    paths = [run_dir / "metrics.json"]
    for fold in config.folds.use:
        paths += [run_dir / "index" / f"fold_{fold}.faiss", run_dir / "candidates" / f"fold_{fold}.parquet"]
    return paths

