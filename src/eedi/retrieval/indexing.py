"""The index stage's work per fold: candidates for the fold's train and validation pairs, and for the test pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from eedi.config import Config
from eedi.data.folds import train_val_split
from eedi.errors import ConfigError, MissingInputError
from eedi.evaluation.metrics import format_mix, ranking_metrics
from eedi.fileio import update_json, write_parquet
from eedi.layout import FULL, TEST, RunLayout, model_name
from eedi.retrieval.model import load_encoder
from eedi.retrieval.search import (
    CandidateRetriever,
    EmbeddingStore,
    calibrate_unseen_boost,
    candidates_frame,
    embedding_key,
    top_k_from_scores,
    unseen_prior,
)
from eedi.runtime import resolve

log = logging.getLogger(__name__)


def _fold_model(layout: RunLayout, name: str) -> Path:
    path = layout.retriever_model(name)
    if not path.is_dir():
        raise MissingInputError(path, "train-retriever", f"no retriever for {name}")
    return path


def index_fold(
    config: Config, fold: int, pairs: pd.DataFrame, folds: pd.DataFrame, misconceptions: pd.DataFrame
) -> dict:
    """Index + candidates + metrics for one fold."""
    layout, name = RunLayout(config.run_dir), model_name(fold)
    model_dir = _fold_model(layout, name)
    model = load_encoder(model_dir, resolve(config.runtime))
    train, val = train_val_split(pairs, folds, fold)
    if val.empty:
        raise ConfigError(f"folds.use: fold {fold} has no labelled validation pairs")
    seen = set(train["MisconceptionId"].astype(int))
    store = EmbeddingStore(embedding_key(model_dir, config.retriever.encode_batch_size))
    retriever = CandidateRetriever(model, misconceptions, config, train, store=store, record_searches=True)
    retriever.index.save(layout.index(name))
    val_scores, val_ids = retriever.search(val["QueryText"].tolist())
    train_scores, train_ids = retriever.search(train["QueryText"].tolist(), train["QuestionId"].tolist())
    store.save(layout.embeddings(name))  # eedi serve loads these instead of embedding them again
    parts = [
        candidates_frame(val["QuestionId_Answer"].tolist(), val_scores, val_ids, fold, "val"),
        candidates_frame(train["QuestionId_Answer"].tolist(), train_scores, train_ids, fold, "train"),
    ]
    actual = val["MisconceptionId"].astype(int).tolist()
    metrics = ranking_metrics(
        actual, val_ids.tolist(), seen=[a in seen for a in actual], unseen_share=config.evaluation.unseen_share
    )
    write_parquet(layout.candidates(name), pd.concat(parts, ignore_index=True))
    update_json(layout.metrics, {name: {"retriever": metrics}})
    log.info(
        "fold %d: retriever MAP@25 (mix) %s, MAP@25 %.4f, recall@25 %.4f (%d val pairs)",
        fold,
        format_mix(metrics),
        metrics["map@25"],
        metrics["recall@25"],
        metrics["n"],
    )
    return metrics


# The index stage's summary key for the unseen boost its test candidates used (calibrated on them when
# index.unseen_top1_share is set): serve applies it to single requests, which are too few to calibrate on.
TEST_UNSEEN_BOOST = "test_unseen_boost"


def test_candidates(
    config: Config, test: pd.DataFrame, misconceptions: pd.DataFrame, labelled: pd.DataFrame
) -> tuple[str, float]:
    """candidates/test.parquet from the full-fit model, else the fold models' mean score. Returns the source
    and the unseen boost used (``index.unseen_boost``, or calibrated on the test rows: ``index.unseen_top1_share``).

    ``labelled``: every labelled training pair (the full-fit model's training rows: prior and label memory)."""
    layout = RunLayout(config.run_dir)
    placement = resolve(config.runtime)
    queries = test["QueryText"].tolist()
    if layout.retriever_model(FULL).is_dir():
        model_dir = _fold_model(layout, FULL)
        store = EmbeddingStore(embedding_key(model_dir, config.retriever.encode_batch_size))
        retriever = CandidateRetriever(
            load_encoder(model_dir, placement), misconceptions, config, labelled, store=store, record_searches=True
        )
        retriever.index.save(layout.index(FULL))
        scores, ids = retriever.search(queries, unseen_top1_share=config.index.unseen_top1_share)
        boost = config.index.unseen_boost if retriever.calibrated_boost is None else retriever.calibrated_boost
        store.save(layout.embeddings(FULL))
        source = FULL
    else:
        # Cross-fitting: each fold model scores the test rows as the full-fit model would (cosine + the label
        # memory over every labelled pair, embedded in its own space), and the mean of those scores ranks them.
        # Cosines of unit vectors share one scale, so the mean is a plain ensemble; the index stage has stored
        # the misconceptions and every labelled query of each fold model, so only the test queries are encoded.
        corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
        total = np.zeros((len(queries), len(corpus_ids)), dtype=np.float32)
        for fold in config.folds.use:
            name = model_name(fold)
            model_dir = _fold_model(layout, name)
            store = EmbeddingStore.load(
                layout.embeddings(name), embedding_key(model_dir, config.retriever.encode_batch_size)
            )
            retriever = CandidateRetriever(load_encoder(model_dir, placement), misconceptions, config, labelled, store)
            total += retriever.dense_scores(retriever.encode(queries))
        total /= len(config.folds.use)
        unseen = unseen_prior(corpus_ids, labelled["MisconceptionId"].astype(int), 1.0)
        share = config.index.unseen_top1_share
        boost = config.index.unseen_boost if share is None else calibrate_unseen_boost(total, unseen, share)
        scores, ids = top_k_from_scores(total + boost * unseen, corpus_ids, config.index.top_k)
        source = "mean of folds " + ",".join(map(str, config.folds.use))
    write_parquet(
        layout.candidates(TEST), candidates_frame(test["QuestionId_Answer"].tolist(), scores, ids, -1, "test")
    )
    if config.index.unseen_top1_share is not None:
        log.info(
            "test: unseen boost %.4f puts an unseen misconception first for %.0f %% of %d rows",
            boost,
            100 * config.index.unseen_top1_share,
            len(queries),
        )
    return source, float(boost)
