"""Supervised fine-tuning of the listwise reranker (TRL SFTTrainer + peft LoRA) and merging its adapter.

Under torchrun every process trains (DDP through the Trainer, or FSDP / DeepSpeed ZeRO-3 through its own
``fsdp`` / ``deepspeed`` arguments: ``reranker.fsdp``, ``reranker.deepspeed``); rank 0 alone writes the
windows, the adapter, the merged model and the fold's state.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from eedi.config import Config, RerankerConfig, trained_values
from eedi.errors import ConfigError, EnvironmentMissing
from eedi.fileio import atomic_dir, read_json, write_json, write_parquet, write_text
from eedi.layout import RunLayout
from eedi.manifest import fingerprint
from eedi.rerank.prompts import misconception_names, pair_lookup, window_prompts
from eedi.rerank.scoring import encode_prompts, label_token_ids
from eedi.rerank.windows import training_windows
from eedi.runtime import Processes, barrier, model_kwargs, processes, resolve
from eedi.synthesis.store import load_synthetic_pairs, training_files
from eedi.tracking import trainer_report_to
from eedi.trainer_progress import TrainerProgress

log = logging.getLogger(__name__)


def sft_dataset(
    windows: pd.DataFrame,
    pairs: Mapping[str, Mapping],
    names: Mapping[int, str],
    tokenizer,
    window_size: int,
    max_length: int,
):
    """Pre-tokenised TRL dataset: prompt ids + the target label token, completion mask on the label only."""

    label_ids = label_token_ids(tokenizer, window_size)
    prompt_ids = encode_prompts(tokenizer, window_prompts(windows, pairs, names, tokenizer), max_length)
    input_ids, masks = [], []
    for ids, target in zip(prompt_ids, windows["target"]):
        input_ids.append(list(ids) + [label_ids[int(target)]])
        masks.append([0] * len(ids) + [1])
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": masks})


# --------------------------------------------------------------------------- training


def _lora_config(rc: RerankerConfig, num_layers: int):
    layers = None
    if rc.lora.layers is not None:
        layers = list(range(max(0, num_layers - rc.lora.layers), num_layers))
    return LoraConfig(
        r=rc.lora.r,
        lora_alpha=rc.lora.alpha,
        lora_dropout=rc.lora.dropout,
        target_modules=list(rc.lora.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def training_arguments(config: Config, procs: Processes, checkpoints: Path) -> SFTConfig:
    """The SFTTrainer's arguments: data-parallel over the launched processes, sharded with FSDP or DeepSpeed
    when the config asks (the Trainer validates ``fsdp`` / ``fsdp_config`` / ``deepspeed`` here)."""
    rc = config.reranker
    if rc.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        raise EnvironmentMissing(
            f"reranker.deepspeed={rc.deepspeed} needs the deepspeed package in the train environment "
            "(pip install deepspeed), or use reranker.fsdp"
        )
    try:
        return _sft_config(config, procs, checkpoints)
    except ValueError as err:
        key = "reranker.deepspeed" if rc.deepspeed is not None else "reranker.fsdp"
        raise ConfigError(f"{key}: the Trainer refuses it ({str(err).splitlines()[0]})") from None


def _sft_config(config: Config, procs: Processes, checkpoints: Path) -> SFTConfig:
    rc, placement = config.reranker, procs.placement
    return SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=rc.epochs,
        per_device_train_batch_size=rc.batch_size,
        gradient_accumulation_steps=rc.grad_accum,
        learning_rate=rc.lr,
        lr_scheduler_type="cosine",
        warmup_steps=rc.warmup_ratio,  # a float < 1 is a ratio of the total steps
        gradient_checkpointing=rc.gradient_checkpointing,
        bf16=placement.dtype == torch.bfloat16,
        fp16=placement.dtype == torch.float16,
        use_cpu=not placement.is_cuda,
        completion_only_loss=True,
        max_length=None,  # prompts are already cut to reranker.max_length; the label is never cut
        train_sampling_strategy="group_by_length",  # similar lengths per batch: less padding
        save_strategy="steps",
        save_steps=rc.save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(10, rc.save_steps)),
        report_to=trainer_report_to(config, "train-reranker"),
        disable_tqdm=True,  # TrainerProgress draws the bar on the console; the log dicts go to the stage log
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        ddp_backend="gloo" if procs.distributed and not placement.is_cuda else None,
        ddp_timeout=config.runtime.ddp_timeout,
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter takes part in every step
        fsdp=rc.fsdp or None,
        fsdp_config=dict(rc.fsdp_config) or None,
        deepspeed=str(rc.deepspeed) if rc.deepspeed is not None else None,
    )


def train_reranker(config: Config, dataset, out_dir: Path) -> dict:
    """Fine-tune the backbone on ``dataset`` with TRL's SFTTrainer (+ LoRA); writes ``out_dir/adapter``
    (LoRA) or ``out_dir/merged`` (full fine-tuning) and ``out_dir/train_log.jsonl`` (rank 0).

    Resumes from the last checkpoint in ``out_dir/checkpoints`` when a run was interrupted.
    """

    rc = config.reranker
    procs = processes(resolve(config.runtime), config.runtime.ddp_timeout)
    placement = procs.placement
    tokenizer = AutoTokenizer.from_pretrained(rc.backbone)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    checkpoints = RunLayout.checkpoints_dir(out_dir)
    args = training_arguments(config, procs, checkpoints)
    model = AutoModelForCausalLM.from_pretrained(rc.backbone, **model_kwargs(placement, rc.load_in_4bit))
    if not (rc.load_in_4bit or rc.fsdp or rc.deepspeed):
        model.to(placement.device)  # this rank's own GPU; sharded models are placed by the Trainer
    peft_config = _lora_config(rc, model.config.get_text_config().num_hidden_layers) if rc.lora.enabled else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[TrainerProgress(f"train-reranker {out_dir.name}")],
    )
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume:
        log.info("resuming reranker training from %s", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    target = RunLayout.adapter_dir(out_dir) if rc.lora.enabled else RunLayout.merged_dir(out_dir)
    if procs.distributed:
        # Every rank calls save_model (under FSDP / ZeRO-3 it gathers the sharded weights); rank 0 writes.
        staging = target.with_name(f".{target.name}.saving")
        if procs.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
        trainer.save_model(str(staging))
        if procs.is_main:
            tokenizer.save_pretrained(staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    else:
        with atomic_dir(target) as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "train_loss" in entry]
    if procs.is_main:
        write_text(RunLayout.train_log(out_dir), "".join(json.dumps(entry) + "\n" for entry in history))
    losses = [entry["loss"] for entry in history if "loss" in entry]
    summary = {
        "train_windows": len(dataset),
        "processes": procs.world_size,
        "steps": int(trainer.state.global_step),
        "train_seconds": round(seconds, 1),
        "train_loss": round(float(result.training_loss), 4),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    del trainer, model
    gc.collect()
    if placement.is_cuda:
        torch.cuda.empty_cache()
    return summary


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, config: Config) -> Path:
    """Fold a LoRA adapter into its base model (peft ``merge_and_unload``) and save an HF folder + tokenizer.

    The base is reloaded in ``runtime.dtype`` (never 4-bit), so a QLoRA adapter merges into
    full-precision weights that vLLM and the quantizer can read.
    """

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    placement = resolve(config.runtime)
    base_path = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    base = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(placement))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    del base, merged
    gc.collect()
    return out_dir


def training_fingerprint(config: Config, candidates_path: Path) -> str:
    """What one reranker depends on: the keys declared to change what train-reranker trains
    (:func:`eedi.config.trained_values`) and the files it trains on (its fold's candidates, the pairs, the
    misconceptions, the synthetic rows when used). Keys that only change how it scores re-score, never retrain."""
    return fingerprint(trained_values(config, "train-reranker"), training_files(config, candidates_path))


def synthetic_rows(config: Config) -> pd.DataFrame | None:
    synthetic = getattr(config, "synthetic", None)
    if not (synthetic and synthetic.use):
        return None

    rows = load_synthetic_pairs(config)
    return rows.dropna(subset=["MisconceptionId"]) if len(rows) else None


def fit_reranker(
    config: Config,
    out_dir: Path,
    train_candidates: pd.DataFrame,
    positives: dict[str, int],
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    train_fp: str,
) -> dict:
    """Train (or reuse) one reranker: windows -> SFT -> adapter -> merged model."""

    rc = config.reranker
    info_path = RunLayout.train_info(out_dir)
    info = read_json(info_path, default={}) or {}
    if info.get("fingerprint") == train_fp and (RunLayout.merged_dir(out_dir) / "config.json").exists():
        log.info("%s is trained with this config: reused", out_dir)
        return info.get("summary", {})
    main = processes(resolve(config.runtime), config.runtime.ddp_timeout).is_main
    barrier()  # every rank has read the fold's state before rank 0 changes it
    if main and info.get("fingerprint") not in (None, train_fp) and RunLayout.checkpoints_dir(out_dir).exists():
        shutil.rmtree(RunLayout.checkpoints_dir(out_dir))  # checkpoints of another config must not be resumed
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        write_json(info_path, {"fingerprint": train_fp, "status": "training"})
    rng = np.random.default_rng(config.seed)
    names = misconception_names(misconceptions)
    windows = training_windows(
        train_candidates,
        positives,
        rc.window_size,
        rc.windows_per_pair,
        rc.hard_ratio,
        rc.depth,
        rng,
        corpus_ids=list(names),
        max_windows=rc.max_train_windows,
        shuffle=rc.shuffle_windows,
    )
    if main:
        write_parquet(RunLayout.train_windows(out_dir), windows)
    tokenizer = AutoTokenizer.from_pretrained(rc.backbone)
    dataset = sft_dataset(windows, pair_lookup(pairs), names, tokenizer, rc.window_size, rc.max_length)
    log.info(
        "%s: %d training windows (%d hard) from %d pairs",
        out_dir.name,
        len(windows),
        int((windows["kind"] == "hard").sum()),
        len(positives),
    )
    summary = train_reranker(config, dataset, out_dir)
    summary["hard_windows"] = int((windows["kind"] == "hard").sum())
    if main:
        # The other ranks go on to the next fold and wait for rank 0 in its first collective.
        if rc.lora.enabled:
            merge_adapter(RunLayout.adapter_dir(out_dir), RunLayout.merged_dir(out_dir), config)
        shutil.rmtree(RunLayout.checkpoints_dir(out_dir), ignore_errors=True)
        write_json(info_path, {"fingerprint": train_fp, "status": "done", "summary": summary})
    return summary


def training_rows(config: Config, pairs: pd.DataFrame, keys: set[str]) -> tuple:
    """Positives for the training keys, plus the synthetic rows when configured (training only)."""
    labels = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"]
    positives = {k: int(labels[k]) for k in sorted(keys) if k in labels.index}
    synthetic = synthetic_rows(config)
    if synthetic is not None:
        clash = synthetic["QuestionId_Answer"].isin(pairs["QuestionId_Answer"])
        if clash.any():
            raise ValueError(
                f"{int(clash.sum())} synthetic row(s) reuse QuestionId_Answer keys of pairs.parquet, "
                f"e.g. {synthetic.loc[clash, 'QuestionId_Answer'].iloc[0]!r}"
            )
        positives.update(zip(synthetic["QuestionId_Answer"], synthetic["MisconceptionId"].astype(int)))
        pairs = pd.concat([pairs, synthetic[[c for c in pairs.columns if c in synthetic.columns]]], ignore_index=True)
    return positives, pairs
