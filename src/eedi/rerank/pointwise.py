"""The pointwise cross-encoder reranker (``reranker.kind: pointwise``), built on sentence-transformers'
``CrossEncoder``: one logit per (query, misconception name), each candidate scored alone.

Training follows the 1st-place team's pointwise ranker, at a size that fits 2 cores: per labelled training pair
of the fold, one group of the positive and ``hard_negatives`` negatives drawn from the retriever's top
``hard_negative_pool`` for that pair, and a softmax cross-entropy over the group plus ``random_negatives`` other
groups' positives from the same batch (the library's cross-encoder ``MultipleNegativesRankingLoss``, on the raw
logits). Binary cross-entropy over the same negatives hardly moved its loss on real data (docs/results.md,
"Real data: rerankers on CPU"). The model starts from the fold's own fine-tuned retriever by default, which has
already learned the misconceptions' texts, with a new one-logit head.

At rerank time the model scores each pair's top ``reranker.depth`` and :mod:`eedi.rerank.moves` decides what it
may move (``reranker.pointwise.move``; a blend with the retriever's score by default).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from eedi.config import Config
from eedi.fileio import atomic_dir, read_json, write_json, write_text
from eedi.layout import RunLayout
from eedi.rerank.moves import rerank_top
from eedi.rerank.prompts import misconception_names

log = logging.getLogger(__name__)


def training_groups(
    config: Config,
    train_candidates: pd.DataFrame,
    positives: dict[str, int],
    queries: dict[str, str],
    names: dict[int, str],
) -> pd.DataFrame:
    """One row per training pair: ``query``, ``positive`` and ``negative_0..`` texts (the columns
    ``MultipleNegativesRankingLoss`` reads in order). Pairs whose retrieved pool holds fewer than
    ``hard_negatives`` other candidates are left out."""
    pc = config.reranker.pointwise
    rng = np.random.default_rng(config.seed)
    ordered = train_candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable")
    keys = sorted(set(ordered["QuestionId_Answer"]) & set(positives))
    if pc.max_train_pairs is not None and len(keys) > pc.max_train_pairs:
        keys = sorted(rng.choice(keys, size=pc.max_train_pairs, replace=False).tolist())
    pools = {
        key: ids[: pc.hard_negative_pool]
        for key, ids in ordered.groupby("QuestionId_Answer", sort=False)["MisconceptionId"].agg(list).items()
    }
    columns = ["query", "positive", *(f"negative_{i}" for i in range(pc.hard_negatives))]
    rows = []
    for key in keys:
        positive = positives[key]
        pool = [int(m) for m in pools[key] if int(m) != positive]
        if len(pool) < pc.hard_negatives:
            continue
        chosen = rng.choice(pool, size=pc.hard_negatives, replace=False)
        rows.append([queries[key], names[positive], *(names[int(m)] for m in chosen)])
    return pd.DataFrame(rows, columns=columns)


def start_model(config: Config, retriever_dir: Path) -> str:
    """The folder or model id the cross-encoder starts from (``reranker.pointwise.backbone``)."""
    backbone = config.reranker.pointwise.backbone
    return str(RunLayout.query_encoder(retriever_dir)) if backbone == "retriever" else backbone


def fit(
    config: Config,
    out_dir: Path,
    train_candidates: pd.DataFrame,
    positives: dict[str, int],
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    retriever_dir: Path,
    train_fp: str,
) -> dict:
    """Train (or reuse) one cross-encoder into ``out_dir/cross_encoder``; returns its training summary (groups,
    steps, seconds, the first and last logged loss against a constant prediction's); the loss curve goes to
    ``out_dir/train_log.jsonl``."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    from eedi.runtime import barrier, processes, resolve
    from eedi.tracking import trainer_report_to
    from eedi.trainer_progress import TrainerProgress

    pc = config.reranker.pointwise
    info_path = RunLayout.train_info(out_dir)
    info = read_json(info_path, default={}) or {}
    target = RunLayout.cross_encoder_dir(out_dir)
    if info.get("fingerprint") == train_fp and (target / "config.json").exists():
        log.info("%s is trained with this config: reused", out_dir)
        return info.get("summary", {})
    # Under torchrun every rank trains (DDP through the Trainer); rank 0 alone writes the state and the model.
    procs = processes(resolve(config.runtime), config.runtime.ddp_timeout)
    placement = procs.placement
    barrier()  # every rank has read the model's state before rank 0 changes it
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(info_path, {"fingerprint": train_fp, "status": "training"})
    queries = dict(zip(pairs["QuestionId_Answer"], pairs["QueryText"]))
    groups = training_groups(config, train_candidates, positives, queries, misconception_names(misconceptions))
    if groups.empty:
        raise ValueError(
            f"{out_dir.name}: no training pair has {pc.hard_negatives} retrieved candidates besides its own "
            "misconception (reranker.pointwise.hard_negatives)"
        )
    dataset = Dataset.from_pandas(groups, preserve_index=False).shuffle(seed=config.seed)
    torch.manual_seed(config.seed)
    start = start_model(config, retriever_dir)
    model = CrossEncoder(start, num_labels=1, max_length=pc.max_length, device=str(placement.device))
    steps = int(np.ceil(len(dataset) / pc.batch_size) * pc.epochs)
    args = CrossEncoderTrainingArguments(
        output_dir=str(RunLayout.checkpoints_dir(out_dir)),
        num_train_epochs=pc.epochs,
        per_device_train_batch_size=pc.batch_size,
        learning_rate=pc.lr,
        warmup_steps=int(round(0.1 * steps)),
        use_cpu=not placement.is_cuda,
        ddp_backend="gloo" if procs.distributed and not placement.is_cuda else None,
        ddp_timeout=config.runtime.ddp_timeout,
        save_strategy="no",
        report_to=trainer_report_to(config, "train-reranker"),
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=max(1, min(10, steps // 10)),
        disable_tqdm=True,  # TrainerProgress draws the bar on the console
        dataloader_num_workers=0,
    )
    # The raw logits into the softmax, as the 1st-place ranker (the library's default squashes them first).
    loss = MultipleNegativesRankingLoss(model, num_negatives=pc.random_negatives, scale=1.0, activation_fn=None)
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        callbacks=[TrainerProgress(f"train-reranker {out_dir.name}")],
    )
    log.info("%s: cross-encoder from %s on %d training groups, %d steps", out_dir.name, start, len(dataset), steps)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    if procs.is_main:
        with atomic_dir(target) as tmp:
            model.save(str(tmp))
        shutil.rmtree(RunLayout.checkpoints_dir(out_dir), ignore_errors=True)  # the Trainer's output_dir, unused
        write_text(RunLayout.train_log(out_dir), "".join(json.dumps(entry) + "\n" for entry in history))
    losses = [float(entry["loss"]) for entry in history]
    summary = {
        "train_groups": len(dataset),
        "processes": procs.world_size,
        "steps": int(trainer.state.global_step),
        "train_seconds": round(seconds, 1),
        # What a model that scores every candidate the same would lose: log of the group's size.
        "constant_loss": round(float(np.log(1 + pc.hard_negatives + pc.random_negatives)), 4),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    if procs.is_main:
        write_json(info_path, {"fingerprint": train_fp, "status": "done", "summary": summary})
    barrier()  # the model is on disk before any rank loads it
    return summary


class PointwiseReranker:
    """A trained cross-encoder and the misconceptions seen in the training pairs of the candidates' retriever."""

    def __init__(self, model_dir: str | Path, labelled: pd.DataFrame, misconceptions: pd.DataFrame, config: Config):
        from sentence_transformers.cross_encoder import CrossEncoder

        from eedi.runtime import resolve

        path = RunLayout.cross_encoder_dir(Path(model_dir))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no cross-encoder there (run train-reranker)")
        placement = resolve(config.runtime)
        self.model = CrossEncoder(
            str(path), max_length=config.reranker.pointwise.max_length, device=str(placement.device)
        )
        self.names = misconception_names(misconceptions)
        self.seen = set(labelled["MisconceptionId"].dropna().astype(int))

    def close(self) -> None:
        """Nothing to release beyond the model, which goes with the object."""

    def rerank(self, config: Config, candidates: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
        """The candidate rows (all of them) plus ``reranker_score``, ``final_score`` and ``final_rank``, as
        :func:`eedi.rerank.schemes.rerank` returns them."""
        rc = config.reranker
        queries = dict(zip(pairs["QuestionId_Answer"], pairs["QueryText"]))
        missing = sorted(set(candidates["QuestionId_Answer"]) - set(queries))
        if missing:
            raise KeyError(f"{len(missing)} candidate pair(s) are not in pairs.parquet, e.g. {missing[:3]}")

        def score(top: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
            ids = top["MisconceptionId"].astype(int).to_numpy()
            inputs = [(queries[key], self.names[m]) for key, m in zip(top["QuestionId_Answer"], ids)]
            t0 = time.time()
            logits = self.model.predict(
                inputs,
                batch_size=rc.pointwise.score_batch_size,
                show_progress_bar=len(inputs) > 10 * rc.pointwise.score_batch_size,
                convert_to_numpy=True,
            )
            log.info("cross-encoder scored %d candidates in %.1fs", len(inputs), time.time() - t0)
            return np.asarray(logits, dtype=np.float64), np.isin(ids, list(self.seen))

        return rerank_top(candidates, rc.depth, rc.pointwise, score)
