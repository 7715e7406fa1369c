"""Contrastive fine-tuning of the bi-encoder for one fold (sentence-transformers Trainer, resumable)."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from sentence_transformers import (
    DefaultBatchSampler,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from torch.utils.data import RandomSampler
from transformers import TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from eedi.config import Config, RetrieverConfig, trained_values
from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
from eedi.data.folds import train_val_split
from eedi.data.schema import K
from eedi.errors import DataError
from eedi.evaluation.metrics import ranking_metrics
from eedi.fileio import atomic_dir, read_json, write_json, write_text
from eedi.layout import RunLayout, model_name
from eedi.manifest import fingerprint
from eedi.retrieval.loss import HardNegativeInfoNCE
from eedi.retrieval.model import build_model, encode_corpus, encode_queries, freeze_unused, with_frozen_documents
from eedi.retrieval.negatives import ContrastiveCollator, NegativeSampler
from eedi.retrieval.search import top_k_from_scores
from eedi.runtime import Placement, Processes, barrier, processes, resolve
from eedi.synthesis.store import load_synthetic_pairs, training_files
from eedi.tracking import trainer_report_to
from eedi.trainer_progress import TrainerProgress

log = logging.getLogger(__name__)


def retrieval_map(
    model: SentenceTransformer,
    queries: list[str],
    positives: list[int],
    corpus_ids: np.ndarray,
    corpus_texts: list[str],
    batch_size: int = 64,
    documents: np.ndarray | None = None,
) -> dict[str, float]:
    """MAP@25 / recall of ``model`` on (query, positive) pairs against the whole corpus (``documents``: the
    corpus's embeddings when they are not the model's, as with ``retriever.document_tower: frozen``)."""
    if documents is None:
        documents = encode_corpus(model, corpus_texts, batch_size)
    scores = encode_queries(model, queries, batch_size) @ documents.T
    _, ids = top_k_from_scores(scores, np.asarray(corpus_ids), K)
    return ranking_metrics(positives, ids.tolist(), recall_ks=(1, 25))


# --------------------------------------------------------------------------- training


def _training_rows(config: Config, fold: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    train, val = train_val_split(load_pairs(config.run_dir), load_folds(config.run_dir), fold)
    synthetic = getattr(config, "synthetic", None)
    if synthetic is not None and synthetic.use:
        extra = load_synthetic_pairs(config)
        extra = extra[extra["MisconceptionId"].notna()]
        log.info("adding %d synthetic pairs to the training rows", len(extra))
        train = pd.concat([train, extra], ignore_index=True)
    if train.empty:
        raise DataError(
            RunLayout(config.run_dir).pairs,
            f"no labelled training pairs for {'full fit' if fold is None else f'fold {fold}'}",
        )
    return train, val


class EpochLog(TrainerCallback):
    """Logs mean loss and validation MAP@25 per epoch (epoch 0 = the starting model, zero-shot). Logging only:
    the negatives follow the Trainer's own schedule (:class:`RetrieverTrainer`), with or without this callback."""

    def __init__(
        self,
        loss: HardNegativeInfoNCE,
        val_queries: list[str],
        val_positives: list[int],
        corpus_ids: np.ndarray,
        corpus_texts: list[str],
        log_path: Path,
        batch_size: int,
    ):
        self.loss = loss
        self.val_queries, self.val_positives = val_queries, val_positives
        self.corpus_ids, self.corpus_texts = corpus_ids, corpus_texts
        self.log_path, self.batch_size = log_path, batch_size
        self.losses: list[float] = []
        self.t_epoch, self.cpu_epoch = time.perf_counter(), time.process_time()
        self.last_logged_step = -1

    def _record(self, state, model, **extra) -> None:
        entry = {"epoch": round(float(state.epoch or 0), 4), "step": int(state.global_step), **extra}
        if self.losses:
            entry["loss"] = float(np.mean(self.losses))
            self.losses = []
        self.last_logged_step = state.global_step
        if not state.is_world_process_zero:
            return  # other DDP ranks go on to the next step and wait for rank 0 there
        if self.val_queries:
            t0 = time.perf_counter()
            metrics = retrieval_map(
                model,
                self.val_queries,
                self.val_positives,
                self.corpus_ids,
                self.corpus_texts,
                self.batch_size,
                documents=self.loss.frozen_corpus(),
            )
            model.train()  # encode() left it in eval mode
            entry.update(
                {
                    "val_map@25": metrics["map@25"],
                    "val_recall@25": metrics["recall@25"],
                    "eval_seconds": round(time.perf_counter() - t0, 2),
                }
            )
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        write_text(self.log_path, "\n".join([*lines, json.dumps(entry)]) + "\n")
        log.info("retriever %s", entry)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # On resume the Trainer has loaded the checkpoint's weights by now: the entry then describes those.
        self._record(state, model, world_size=args.world_size)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.loss.refresh_seconds = 0.0
        self.t_epoch, self.cpu_epoch = time.perf_counter(), time.process_time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def _timing(self) -> dict:
        # CPU seconds of this process too: on a shared machine they measure the work, wall time the wait.
        return {
            "train_seconds": round(time.perf_counter() - self.t_epoch, 2),
            "train_cpu_seconds": round(time.process_time() - self.cpu_epoch, 2),
            "corpus_refresh_seconds": round(self.loss.refresh_seconds, 2),
        }

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._record(state, model, **self._timing())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.last_logged_step:  # max_steps stopped mid-epoch
            self._record(state, model, **self._timing())


class EpochBatchSampler(DefaultBatchSampler):
    """sentence-transformers' default batch sampler, whose ``set_epoch`` (called by the Trainer at the start of
    every epoch, a resumed one included, and on every DDP rank) also sets the epoch the negatives are drawn for."""

    def __init__(self, *args, negatives: NegativeSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.negatives = negatives

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.negatives.epoch = epoch


class RetrieverTrainer(SentenceTransformerTrainer):
    """Drives the loss's negative sampling from its own schedule: the epoch through the batch sampler's
    ``set_epoch``, the optimizer step (when the mined-negatives cache refreshes) from ``self.state``. Resumes
    LoRA runs from the adapter alone, instead of re-reading the whole backbone."""

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        return EpochBatchSampler(
            RandomSampler(dataset, generator=generator),
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
            negatives=self.loss.sampler,
        )

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.loss.global_step = self.state.global_step
        return super().compute_loss(model, inputs, *args, **kwargs)

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        adapter = Path(checkpoint_path) / "adapter_model.safetensors"
        transformers_model = self.model.transformers_model
        if adapter.exists() and getattr(transformers_model, "_hf_peft_config_loaded", False):
            result = set_peft_model_state_dict(transformers_model, load_file(str(adapter)))
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(
                    f"checkpoint {checkpoint_path} does not match the adapter: {result.unexpected_keys[:3]}"
                )
            return
        super()._load_from_checkpoint(checkpoint_path)


# How the Trainer wraps the bi-encoder in DistributedDataParallel. No buffer broadcasts: DDP would broadcast
# the buffers (constants here: position ids, rotary frequencies) at every forward pass that follows one with
# gradients, and each rank embeds its own number of document chunks, so the ranks would issue different
# numbers of broadcasts and hang or mix up their collectives (tests/test_distributed.py). No search for
# unused parameters: freeze_unused freezes them instead.
DDP_KWARGS = {"broadcast_buffers": False, "find_unused_parameters": False}


def schedule(cfg: RetrieverConfig, rows: int, world_size: int) -> dict[str, int]:
    """Optimizer steps of one fold's run: every step consumes batch_size x grad_accum rows on each of the
    ``world_size`` processes (the Trainer's DistributedSampler gives each rank 1/world_size of the rows), so
    N processes take 1/N of one process's steps, and the warm-up is a share of those."""
    steps_per_epoch = max(1, -(-rows // (cfg.batch_size * cfg.grad_accum * world_size)))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "warmup_steps": int(round(cfg.warmup_ratio * total)),
        "logging_steps": max(1, min(50, total // 5)),
    }


def train_fold(config: Config, fold: int | None) -> dict:
    """Train (or resume, or skip) the retriever of one fold; ``fold=None`` trains on all labelled pairs."""
    cfg = config.retriever
    layout = RunLayout(config.run_dir)
    out = layout.retriever(model_name(fold))
    log_path, info_path = RunLayout.train_log(out), RunLayout.train_info(out)
    train_fp = _train_fingerprint(config, fold)
    trained_fp = (read_json(info_path, default={}) or {}).get("fingerprint")
    if trained_fp == train_fp and RunLayout.model_dir(out).is_dir():
        log.info("%s: trained with this config, reused", out)
        return _summary(log_path)
    # Join the other training processes (torchrun) before any model is built: each loads onto its own device.
    procs = processes(resolve(config.runtime), config.runtime.ddp_timeout)
    barrier()  # every rank has read the fold's state before rank 0 changes it
    # Another config's model, adapter, checkpoints and log must be neither reused nor resumed.
    stale = trained_fp != train_fp
    if stale and procs.is_main:
        for path in (RunLayout.model_dir(out), RunLayout.adapter_dir(out), RunLayout.checkpoints_dir(out), log_path):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if procs.is_main:
        write_json(info_path, {"fingerprint": train_fp, "status": "training"})
    train, val = _training_rows(config, fold)
    checkpoints = RunLayout.checkpoints_dir(out)
    # Every rank decides alike: a stale fold starts over even where rank 0 has not deleted it yet.
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() and not stale else None
    if resume is None and procs.is_main:
        log_path.unlink(missing_ok=True)  # a log without a checkpoint belongs to a run that never got far

    seconds = _fit(config, fold, procs, train, val, resume)
    if procs.is_main:
        # _fit has returned: the trained model is freed, so the merge below holds one copy of the backbone.
        gc.collect()
        if procs.placement.is_cuda:
            torch.cuda.empty_cache()
        merge_saved_adapter(cfg, procs.placement, out)
        shutil.rmtree(checkpoints, ignore_errors=True)
        write_json(info_path, {"fingerprint": train_fp, "status": "done"})
    barrier()
    return {**_summary(log_path), "seconds": round(seconds, 1)}


def negative_pool(cfg: RetrieverConfig, train: pd.DataFrame) -> np.ndarray | None:
    """The misconceptions negatives may be drawn from (``retriever.negatives_from``); None: all of them."""
    if cfg.negatives_from == "training_labels":
        return np.unique(train["MisconceptionId"].to_numpy(np.int64))
    return None


def _fit(
    config: Config, fold: int | None, procs: Processes, train: pd.DataFrame, val: pd.DataFrame, resume: str | None
) -> float:
    """Train one fold's retriever; rank 0 saves the adapter (LoRA) or the whole model. Returns the seconds
    spent. Everything that holds the model (Trainer, loss, callbacks) is local here,
    so it is freed when this returns, before the adapter is merged into a second copy of the backbone."""
    cfg, placement = config.retriever, procs.placement
    out = RunLayout(config.run_dir).retriever(model_name(fold))
    misconceptions = load_misconceptions(config.run_dir)
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    corpus_texts = misconceptions["MisconceptionName"].tolist()
    set_seed(config.seed)  # LoRA's initialisation draws from the global RNG: same seed, same starting adapter
    model = build_model(cfg, placement)
    if procs.distributed:
        frozen = freeze_unused(model)
        if frozen:
            log.info("frozen (no part in the embedding, which DDP cannot train): %s", frozen)
    sampler = NegativeSampler(
        corpus_ids,
        cfg.n_hard_negatives,
        cfg.hard_negative_ranks,
        cfg.n_random_negatives,
        seed=config.seed,
        pool=negative_pool(cfg, train),
    )
    collator = ContrastiveCollator(
        preprocess_fn=model.preprocess, sampler=sampler, query_prompt=model.prompts.get("query")
    )
    loss = HardNegativeInfoNCE(
        model,
        corpus_ids,
        corpus_texts,
        sampler,
        scale=1.0 / cfg.temperature,
        refresh_steps=cfg.hard_negative_refresh_steps,
        mini_batch_size=cfg.mini_batch_size,
        gradient_cache=cfg.gradient_cache,
        encode_batch_size=cfg.encode_batch_size,
        frozen_documents=cfg.document_tower == "frozen",
    )
    dataset = Dataset.from_dict(
        {"query": train["QueryText"].tolist(), "label": train["MisconceptionId"].astype(int).tolist()}
    )
    steps = schedule(cfg, len(dataset), procs.world_size)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(RunLayout.checkpoints_dir(out)),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=steps["warmup_steps"],
        lr_scheduler_type="linear",
        bf16=placement.is_cuda and str(placement.dtype) == "torch.bfloat16",
        fp16=placement.is_cuda and str(placement.dtype) == "torch.float16",
        use_cpu=not placement.is_cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        logging_steps=steps["logging_steps"],
        seed=config.seed,
        report_to=trainer_report_to(config, "train-retriever"),
        disable_tqdm=True,  # TrainerProgress draws the bar on the console; the log dicts go to the stage log
        ddp_backend="gloo" if procs.distributed and not placement.is_cuda else None,
        ddp_timeout=config.runtime.ddp_timeout,
        ddp_broadcast_buffers=DDP_KWARGS["broadcast_buffers"],
        ddp_find_unused_parameters=DDP_KWARGS["find_unused_parameters"],
        dataloader_drop_last=False,
    )
    validated = val if cfg.validate_epochs else val.iloc[:0]
    callback = EpochLog(
        loss,
        validated["QueryText"].tolist(),
        validated["MisconceptionId"].astype(int).tolist(),
        corpus_ids,
        corpus_texts,
        RunLayout.train_log(out),
        cfg.encode_batch_size,
    )
    trainer = RetrieverTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        data_collator=collator,
        callbacks=[callback, TrainerProgress(f"train-retriever {model_name(fold)}")],
    )
    log.info(
        "%s: %d training pairs (%d steps/epoch on %d process(es)), %d validation pairs%s",
        model_name(fold),
        len(dataset),
        steps["steps_per_epoch"],
        procs.world_size,
        len(val),
        f", resuming from {resume}" if resume else "",
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    if procs.is_main:
        save_trained(model, cfg, out, placement)
    return seconds


def _train_fingerprint(config: Config, fold: int | None) -> str:
    """What one fold's model depends on: the keys declared to change what train-retriever trains
    (:func:`eedi.config.trained_values`), the fold, and the files it trains on (the prepared pairs and folds,
    the synthetic rows when used). A fold's model is reused only under the same one."""
    files = training_files(config, RunLayout(config.run_dir).folds)
    return fingerprint(trained_values(config, "train-retriever"), model_name(fold), files)


def _summary(log_path: Path) -> dict:
    if not log_path.exists():
        return {}
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    summary = {"log_entries": len(entries)}
    evaluated = [e for e in entries if "val_map@25" in e]
    if evaluated:
        summary.update({"zero_shot_map@25": evaluated[0]["val_map@25"], "final_map@25": evaluated[-1]["val_map@25"]})
    return summary


def save_trained(model: SentenceTransformer, cfg: RetrieverConfig, out: Path, placement: Placement) -> None:
    """Write ``adapter/`` (LoRA) or, for full fine-tuning, ``model/`` atomically (with a frozen document tower,
    the trained model routes queries only: :func:`with_frozen_documents`)."""
    if not cfg.lora.enabled:
        if cfg.document_tower == "frozen":
            model = with_frozen_documents(model, cfg, placement)
        with atomic_dir(RunLayout.model_dir(out)) as tmp:
            model.save(str(tmp))
        return
    with atomic_dir(RunLayout.adapter_dir(out)) as tmp:
        model.transformers_model.save_pretrained(str(tmp))


def merge_saved_adapter(cfg: RetrieverConfig, placement: Placement, out: Path) -> None:
    """Write ``model/``: the saved ``adapter/`` merged into the backbone (LoRA only), atomically.

    Call it once the trained model is freed: the merge loads a fresh full-precision backbone (right for QLoRA
    too, where the trained base is 4-bit and merging into it would round the weights to NF4), so with the
    trained model still in memory a 14B backbone would be held twice in bf16 (~65 GB at the peak)."""
    if not cfg.lora.enabled:
        return
    merged = build_model(cfg, placement, trainable=False, load_in_4bit=False)
    transformer = merged[0]
    transformer.model = PeftModel.from_pretrained(transformer.model, str(RunLayout.adapter_dir(out))).merge_and_unload()
    if cfg.document_tower == "frozen":
        merged = with_frozen_documents(merged, cfg, placement)
    with atomic_dir(RunLayout.model_dir(out)) as tmp:
        merged.save(str(tmp))
