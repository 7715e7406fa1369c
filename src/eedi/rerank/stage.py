"""Stage ``train-reranker``: a listwise LoRA reranker per fold, and its validation reranking.

(``reranker.kind: features`` instead trains the LightGBM ranker of :mod:`eedi.rerank.ltr`: :func:`run_features`;
``reranker.kind: pointwise`` the cross-encoder of :mod:`eedi.rerank.pointwise`: :func:`run_pointwise`.)

The reranker is a causal LM that reads the question context and a *window* of candidate
misconceptions labelled A, B, C, ... and answers with the label of the one behind the wrong
answer. Its score for each candidate is the probability of that candidate's label at the
answer position, restricted to the window's labels (:mod:`eedi.rerank.scoring`).

Training (per fold, on the fold's ``part="train"`` candidates; never on validation):

* windows of ``window_size`` candidates per labelled pair, in retriever order; the positive
  keeps its place when the retriever found it and is inserted at a random position when it
  did not; the target is the positive's label;
* *hard* windows take the negatives ranked right around the positive, *random* windows draw
  them from the retrieved top ``depth`` (``hard_ratio`` sets the mix);
* ``shuffle_windows`` then permutes each window: in retriever order the label's position
  carries the retriever's rank (the positive sits near the top), a shortcut a small model
  takes instead of reading the candidates;
* TRL's ``SFTTrainer`` with a peft LoRA adapter; the dataset is pre-tokenised with a
  completion mask covering only the label token, so the loss is on the answer token alone
  and the training input is token-for-token what scoring sees.

Reranking (:func:`eedi.rerank.schemes.rerank`) scores the retriever's top ``depth`` with sliding or tournament
windows, fuses reranker and retriever scores, and keeps candidates below ``depth`` in
retriever order after the reranked ones.
"""

from __future__ import annotations

import logging

import pandas as pd

from eedi.config import Config
from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
from eedi.data.folds import train_val_split
from eedi.data.schema import RERANKED_COLUMNS
from eedi.errors import DataError
from eedi.evaluation.metrics import fold_metrics, format_mix
from eedi.fileio import update_json, write_parquet
from eedi.layout import FULL, RunLayout, model_name
from eedi.manifest import fingerprint
from eedi.rerank.ltr import FeatureReranker, training_table
from eedi.rerank.ltr import fit as fit_ltr
from eedi.rerank.pointwise import PointwiseReranker
from eedi.rerank.pointwise import fit as fit_pointwise
from eedi.rerank.schemes import rerank
from eedi.rerank.train import fit_reranker, training_fingerprint, training_rows
from eedi.rerank.windows import one_list_per_pair, read_candidates
from eedi.runtime import processes, resolve

log = logging.getLogger(__name__)


def run(config: Config) -> dict:
    """Per fold in folds.use, train the reranker on part="train", rerank part="val", record MAP@25."""
    if not config.reranker.enabled:
        log.info("reranker.enabled=false: no reranker is trained; infer submits the retriever's ranking")
        return {"skipped": "reranker.enabled=false"}
    layout = RunLayout(config.run_dir)
    pairs, folds, misconceptions = load_pairs(layout.root), load_folds(layout.root), load_misconceptions(layout.root)
    if config.reranker.kind == "features":
        return run_features(config, layout, pairs, folds, misconceptions)
    if config.reranker.kind == "pointwise":
        return run_pointwise(config, layout, pairs, folds, misconceptions)
    # Under torchrun every rank trains each fold; rank 0 alone scores the validation part and writes the results.
    main = processes(resolve(config.runtime), config.runtime.ddp_timeout).is_main
    summary: dict = {"folds": {}}
    tables = []
    for k in config.folds.use:
        name = model_name(k)
        path = layout.candidates(name)
        candidates, train_part, val_part = _fold_candidates(path)
        tables.append(candidates)
        out_dir = layout.reranker(name)
        positives, train_pairs = training_rows(config, pairs, set(train_part["QuestionId_Answer"]))
        fit = fit_reranker(
            config, out_dir, train_part, positives, train_pairs, misconceptions, training_fingerprint(config, path)
        )
        if not main:
            continue
        reranked = rerank(
            config, RunLayout.merged_dir(out_dir), val_part, pairs, misconceptions, config.reranker.backend
        )
        seen = set(train_val_split(pairs, folds, k)[0]["MisconceptionId"].astype(int))
        summary["folds"][name] = {**_record(config, layout, k, reranked, val_part, pairs, seen), "train": fit}
    if config.folds.full_fit:
        combined, positives, train_pairs, full_fp = _full_fit_rows(config, layout, pairs, tables)
        summary[FULL] = fit_reranker(
            config, layout.reranker(FULL), combined, positives, train_pairs, misconceptions, full_fp
        )
    return summary


def _fold_candidates(path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A fold's candidates and their training and validation parts (both must be there)."""
    candidates = read_candidates(path)
    train_part = candidates[candidates["part"] == "train"]
    val_part = candidates[candidates["part"] == "val"]
    if train_part.empty or val_part.empty:
        raise DataError(
            path,
            f"needs part='train' and part='val' rows (found {sorted(candidates['part'].unique())})",
            column="part",
        )
    return candidates, train_part, val_part


def _full_fit_rows(config: Config, layout: RunLayout, pairs, tables: list[pd.DataFrame]) -> tuple:
    """The full-fit reranker's training candidates (every labelled pair once, with the most realistic candidate
    list the folds offer), its positives and pairs, and the fingerprint of what it trains on."""
    combined = one_list_per_pair(pd.concat(tables, ignore_index=True))
    positives, train_pairs = training_rows(config, pairs, set(combined["QuestionId_Answer"]))
    full_fp = fingerprint(*[training_fingerprint(config, layout.candidates(model_name(k))) for k in config.folds.use])
    return combined, positives, train_pairs, full_fp


def run_pointwise(config: Config, layout: RunLayout, pairs, folds, misconceptions) -> dict:
    """reranker.kind=pointwise: fold k's cross-encoder trains on the fold's training candidates, starting from
    the fold's retriever (``reranker.pointwise.backbone: retriever``), and reranks its validation candidates; the
    submission's model (``reranker/full``, with ``folds.full_fit``) trains on every labelled pair, from the
    full-fit retriever."""
    main = processes(resolve(config.runtime), config.runtime.ddp_timeout).is_main
    summary: dict = {"folds": {}, "kind": "pointwise"}
    tables = []
    for k in config.folds.use:
        name = model_name(k)
        path = layout.candidates(name)
        candidates, train_part, val_part = _fold_candidates(path)
        tables.append(candidates)
        positives, train_pairs = training_rows(config, pairs, set(train_part["QuestionId_Answer"]))
        fit = fit_pointwise(
            config,
            layout.reranker(name),
            train_part,
            positives,
            train_pairs,
            misconceptions,
            layout.retriever_model(name),
            training_fingerprint(config, path),
        )
        if not main:  # rank 0 alone scores the validation part and writes the results
            continue
        labelled = train_val_split(pairs, folds, k)[0]
        reranker = PointwiseReranker(layout.reranker(name), labelled, misconceptions, config)
        reranked = reranker.rerank(config, val_part, pairs)
        seen = set(labelled["MisconceptionId"].astype(int))
        summary["folds"][name] = {**_record(config, layout, k, reranked, val_part, pairs, seen), "train": fit}
        log.info(
            "fold %d: cross-encoder loss %s -> %s over %s steps (a constant scores %s)",
            k,
            fit.get("first_loss"),
            fit.get("last_loss"),
            fit.get("steps"),
            fit.get("constant_loss"),
        )
    if config.folds.full_fit:
        combined, positives, train_pairs, full_fp = _full_fit_rows(config, layout, pairs, tables)
        summary[FULL] = fit_pointwise(
            config,
            layout.reranker(FULL),
            combined,
            positives,
            train_pairs,
            misconceptions,
            layout.retriever_model(FULL),
            full_fp,
        )
    return summary


def _record(config: Config, layout: RunLayout, k: int, reranked, val_part, pairs, seen: set[int]) -> dict:
    """Write fold k's reranked candidates and metrics; log the gain over the retriever on its validation rows
    (which neither the fold's retriever nor its reranker trained on)."""
    name = model_name(k)
    write_parquet(layout.reranked(name), reranked[RERANKED_COLUMNS])
    metrics = fold_metrics(reranked, pairs, "final_rank", seen, config.evaluation.unseen_share)
    retriever = fold_metrics(val_part, pairs, "rank", seen, config.evaluation.unseen_share)
    update_json(layout.metrics, {name: {"reranker": metrics}})
    log.info(
        "fold %d: MAP@25 (mix) retriever %s -> reranker %s (%s); MAP@25 retriever %.4f -> reranker %.4f (%d val pairs)",
        k,
        format_mix(retriever),
        format_mix(metrics),
        (
            f"{metrics['map@25_mix'] - retriever['map@25_mix']:+.4f}"
            if metrics.get("map@25_mix") is not None and retriever.get("map@25_mix") is not None
            else "no unseen pairs: no mix"
        ),
        retriever["map@25"],
        metrics["map@25"],
        metrics["n"],
    )
    return {
        "retriever_map@25": retriever["map@25"],
        "reranker_map@25": metrics["map@25"],
        "retriever_map@25_unseen": retriever.get("map@25_unseen"),
        "reranker_map@25_unseen": metrics.get("map@25_unseen"),
        "retriever_map@25_mix": retriever.get("map@25_mix"),
        "reranker_map@25_mix": metrics.get("map@25_mix"),
    }


def run_features(config: Config, layout: RunLayout, pairs, folds, misconceptions) -> dict:
    """reranker.kind=features: fold k's LightGBM ranker learns from the validation candidates of the other used
    folds (each scored by a retriever that never saw them) and reranks fold k's; the submission's model
    (``reranker/full``) learns from all of them. Seconds of CPU: no model is loaded."""
    use = list(config.folds.use)
    tables, parts = {}, {}
    for k in use:
        path = layout.candidates(model_name(k))
        candidates = read_candidates(path)
        val_part = candidates[candidates["part"] == "val"]
        if val_part.empty:
            raise DataError(
                path, "needs part='val' rows: the feature reranker trains on validation candidates", column="part"
            )
        labelled = train_val_split(pairs, folds, k)[0]
        parts[k] = (val_part, labelled)
        tables[k] = training_table(config, val_part, pairs, labelled, misconceptions)
    summary: dict = {"folds": {}, "kind": "features"}
    for k in use:
        name = model_name(k)
        others = pd.concat([tables[j] for j in use if j != k], ignore_index=True)
        fit = fit_ltr(config, others, layout.reranker(name))
        val_part, labelled = parts[k]
        reranked = FeatureReranker(layout.reranker(name), labelled, misconceptions).rerank(config, val_part, pairs)
        seen = set(labelled["MisconceptionId"].astype(int))
        summary["folds"][name] = {**_record(config, layout, k, reranked, val_part, pairs, seen), "train": fit}
        log.info(
            "fold %d: trained on %d pairs of folds %s: MAP@25 on them by iteration %s",
            k,
            fit["pairs"],
            [j for j in use if j != k],
            fit["train_map@25_by_iteration"],
        )
    # The submission's model, whether the test candidates come from a full-fit retriever or the folds' mean.
    summary[FULL] = fit_ltr(config, pd.concat(tables.values(), ignore_index=True), layout.reranker(FULL))
    return summary
