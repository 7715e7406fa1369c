"""Stage 3 (train-retriever): the bi-encoder, fine-tuned contrastively, one model per fold.

Model: a sentence-transformers pipeline ``Transformer -> Pooling -> Normalize`` over any
Hugging Face backbone (``retriever.backbone``: a hub id or a local folder).

* Causal LMs (Qwen2.5, SmolLM2, ...) use **last-token pooling**. The tokenizer appends the EOS
  token to every text (its post-processor, so truncation keeps room for it and the setting is
  saved with the model); the pooled vector is the EOS token's hidden state, found from the
  attention mask, so left and right padding give the same vector. Queries get the task
  instruction (``Instruct: ...\\nQuery: ``) as the model's saved ``query`` prompt;
  misconception texts get none.
* Encoders (MiniLM, BERT ...) use mean pooling and no instruction, as they were pre-trained.
* LoRA through peft (``model.add_adapter``), or full fine-tuning (``retriever.lora.enabled=false``).
  On CUDA: bf16, SDPA / flash attention (:mod:`eedi.runtime`), gradient checkpointing and
  optional 4-bit NF4 loading (QLoRA).

Training: sentence-transformers' ``SentenceTransformerTrainer`` with the loss and batches of
:mod:`eedi.negatives` (in-batch + hard + random negatives, documents deduplicated per batch,
length-sorted chunks, optional GradCache); hard negatives are mined online from each step's
own query embeddings. DDP comes from the Trainer: launch with
``torchrun --nproc_per_node N scripts/02_train_retriever.py``.

Outputs per fold, in ``run_dir/retriever/fold_{k}/`` (``full/`` for ``folds.full_fit``):

* ``model/`` - the merged model, loadable with ``SentenceTransformer(path)``;
* ``adapter/`` - the LoRA adapter (peft format), when LoRA is on;
* ``train_log.jsonl`` - one line per evaluation: epoch, step, mean training loss, validation
  MAP@25 / recall@25 (epoch 0 = the starting model, zero-shot), seconds spent;
* ``checkpoints/`` - Trainer checkpoints while training (resume after a crash); removed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from transformers import TrainerCallback, set_seed

from .config import Config, ConfigError, RetrieverConfig, config_to_dict
from .io import atomic_dir, file_sha256, read_json, write_json, write_text
from .manifest import fingerprint
from .metrics import ranking_metrics
from .negatives import ContrastiveCollator, HardNegativeInfoNCE, NegativeSampler
from .runtime import Placement, model_kwargs, resolve

log = logging.getLogger(__name__)

QUERY_PROMPT = "Instruct: {instruction}\nQuery: "
FULL = "full"


# --------------------------------------------------------------------------- model


def is_causal_lm(backbone_config) -> bool:
    architectures = getattr(backbone_config, "architectures", None) or []
    return bool(getattr(backbone_config, "is_decoder", False)) or any(
        a.endswith("ForCausalLM") for a in architectures)


def backbone_config(backbone: str):
    """The backbone's HF config; a clear ConfigError when it is neither a folder nor a reachable hub id."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(backbone)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"retriever.backbone: {backbone!r} is neither a model folder nor a reachable "
                          f"Hugging Face model id ({first})") from None


def resolve_pooling(cfg: RetrieverConfig, hf_config) -> str:
    if cfg.pooling != "auto":
        return cfg.pooling
    return "lasttoken" if is_causal_lm(hf_config) else "mean"


def configure_last_token_tokenizer(tokenizer) -> None:
    """Append EOS to every text, so the last real position holds the EOS token.

    The EOS goes in through the tokenizer's post-processor rather than into the text: truncation
    then keeps room for it, and the saved tokenizer.json carries the setting to every later load.
    """
    if tokenizer.eos_token is None:
        raise ValueError("last-token pooling needs a tokenizer with an EOS token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.add_eos_token = True
    if tokenizer("x")["input_ids"][-1] != tokenizer.eos_token_id:
        raise ValueError(f"{type(tokenizer).__name__} does not support add_eos_token; cannot pool the EOS token")


def build_model(cfg: RetrieverConfig, placement: Placement, trainable: bool = True,
                load_in_4bit: bool | None = None) -> SentenceTransformer:
    """The untrained bi-encoder for ``cfg.backbone``, set up for training (fresh LoRA adapters, frozen
    layers) unless ``trainable=False``: then the plain backbone, for zero-shot use or to merge an adapter into."""
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf_config = backbone_config(cfg.backbone)
    pooling = resolve_pooling(cfg, hf_config)
    four_bit = cfg.load_in_4bit if load_in_4bit is None else load_in_4bit
    kwargs = model_kwargs(placement, four_bit)
    if trainable and not cfg.lora.enabled:
        # Full fine-tuning keeps float32 master weights; bf16 on CUDA then comes from the Trainer's autocast.
        kwargs["dtype"] = torch.float32
    # Plain-text modality: sentence-transformers would otherwise wrap texts of chat models in their
    # chat template (system prompt and all); the retriever's inputs are instruction + text only.
    text_only = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
    transformer = Transformer(cfg.backbone, model_kwargs=kwargs, processor_kwargs={"model_max_length": cfg.max_length},
                              modality_config=text_only, module_output_name="token_embeddings")
    prompts = {}
    if pooling == "lasttoken":
        configure_last_token_tokenizer(transformer.tokenizer)
        if cfg.query_instruction:
            prompts["query"] = QUERY_PROMPT.format(instruction=cfg.query_instruction)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling), Normalize()]
    model = SentenceTransformer(modules=modules, prompts=prompts, device=None if four_bit else placement.device)
    model.max_seq_length = cfg.max_length
    if trainable and cfg.lora.enabled:
        add_lora(model, cfg, four_bit, top_layers(cfg, hf_config))
    elif trainable and cfg.top_layers:
        freeze_below(model, top_layers(cfg, hf_config))
    return model


def top_layers(cfg: RetrieverConfig, hf_config) -> list[int] | None:
    """Indices of the trainable transformer layers (None: all)."""
    if cfg.top_layers is None:
        return None
    n = hf_config.num_hidden_layers
    return list(range(max(0, n - cfg.top_layers), n))


# The names peft also recognises for the stack of transformer layers (encoder.layer.3, model.layers.3, h.3 ...).
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|block|blocks)\.(\d+)\.")


def freeze_below(model: SentenceTransformer, layers: list[int]) -> None:
    """Full fine-tuning of ``layers`` only: everything else (embeddings, lower layers) is frozen."""
    trainable = 0
    for name, param in model.transformers_model.named_parameters():
        match = _LAYER_INDEX.search(name)
        param.requires_grad = bool(match) and int(match.group(1)) in layers
        trainable += param.requires_grad
    if not trainable:
        raise ConfigError(f"retriever.top_layers: no parameter of {model.transformers_model.__class__.__name__} "
                          f"belongs to layers {layers}")


def add_lora(model: SentenceTransformer, cfg: RetrieverConfig, four_bit: bool, layers: list[int] | None) -> None:
    from peft import LoraConfig, prepare_model_for_kbit_training

    if four_bit:
        # fp32 norms and an input-grad hook, as QLoRA needs; checkpointing is switched on by the Trainer.
        prepare_model_for_kbit_training(model.transformers_model, use_gradient_checkpointing=False)
    targets: list[str] = list(cfg.lora.target_modules)
    if layers is not None:
        # Full module names, not peft's layers_to_transform: its layer regex needs a prefix before
        # "layers.N." and sentence-transformers wraps the bare decoder, whose names start there.
        targets = layer_modules(model.transformers_model, targets, set(layers))
        if not targets:
            raise ConfigError(f"retriever.lora.target_modules {cfg.lora.target_modules} match no module of "
                              f"layers {layers} of {cfg.backbone}")
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="FEATURE_EXTRACTION")
    try:
        model.add_adapter(lora)
    except ValueError as err:
        if "target modules" in str(err).lower() or "not found" in str(err).lower():
            raise ConfigError(f"retriever.lora.target_modules {cfg.lora.target_modules} match no module of "
                              f"{cfg.backbone}: {str(err).splitlines()[0]}") from None
        raise


def layer_modules(model, names: list[str], layers: set[int]) -> list[str]:
    """Full names of the modules called one of ``names`` inside decoder layers ``layers`` (the first
    integer in a module's dotted name is its layer index)."""
    wanted = set(names)
    out = []
    for full_name, _ in model.named_modules():
        parts = full_name.split(".")
        index = next((int(p) for p in parts if p.isdigit()), None)
        if parts[-1] in wanted and index in layers:
            out.append(full_name)
    return out


def load_encoder(path: str | Path, placement: Placement) -> SentenceTransformer:
    """A trained retriever (a ``model/`` folder written by this stage)."""
    return SentenceTransformer(str(path), device=placement.device, model_kwargs={"dtype": placement.dtype})


def encode_queries(model: SentenceTransformer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 query embeddings (with the model's saved query prompt, if any)."""
    return model.encode_query(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                              show_progress_bar=len(texts) > 4 * batch_size).astype(np.float32)


def encode_corpus(model: SentenceTransformer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 misconception embeddings (no prompt)."""
    return model.encode_document(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                                 show_progress_bar=len(texts) > 4 * batch_size).astype(np.float32)


def retrieval_map(model: SentenceTransformer, queries: list[str], positives: list[int], corpus_ids: np.ndarray,
                  corpus_texts: list[str], batch_size: int = 64) -> dict[str, float]:
    """MAP@25 / recall of ``model`` on (query, positive) pairs against the whole corpus."""
    from .index import top_k_from_scores

    scores = encode_queries(model, queries, batch_size) @ encode_corpus(model, corpus_texts, batch_size).T
    _, ids = top_k_from_scores(scores, np.asarray(corpus_ids), 25)
    return ranking_metrics(positives, ids.tolist(), recall_ks=(1, 25))


# --------------------------------------------------------------------------- training


def _training_rows(config: Config, fold: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    from .data import load_folds, load_pairs, train_val_split

    run_dir = Path(config.run_dir)
    train, val = train_val_split(load_pairs(run_dir), load_folds(run_dir), fold)
    synthetic = getattr(config, "synthetic", None)
    if synthetic is not None and synthetic.use:
        from .synthesis import load_synthetic_pairs

        extra = load_synthetic_pairs(config)
        extra = extra[extra["MisconceptionId"].notna()]
        log.info("adding %d synthetic pairs to the training rows", len(extra))
        train = pd.concat([train, extra], ignore_index=True)
    if train.empty:
        raise ValueError(f"no labelled training pairs for {'full fit' if fold is None else f'fold {fold}'}")
    return train, val


def _fold_name(fold: int | None) -> str:
    return FULL if fold is None else f"fold_{fold}"


class EpochLog(TrainerCallback):
    """Logs mean loss and validation MAP@25 per epoch (epoch 0 = the starting model, zero-shot); keeps the
    loss's negative sampling in step with the Trainer (epoch for the draws, global step for the cache)."""

    def __init__(self, loss: HardNegativeInfoNCE, val_queries: list[str], val_positives: list[int],
                 corpus_ids: np.ndarray, corpus_texts: list[str], log_path: Path, batch_size: int):
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
            metrics = retrieval_map(model, self.val_queries, self.val_positives, self.corpus_ids, self.corpus_texts,
                                    self.batch_size)
            model.train()  # encode() left it in eval mode
            entry.update({"val_map@25": metrics["map@25"], "val_recall@25": metrics["recall@25"],
                          "eval_seconds": round(time.perf_counter() - t0, 2)})
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        write_text(self.log_path, "\n".join([*lines, json.dumps(entry)]) + "\n")
        log.info("retriever %s", entry)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # On resume the Trainer has loaded the checkpoint's weights by now: the entry then describes those.
        self._record(state, model, world_size=args.world_size)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.loss.sampler.epoch = int(round(state.epoch or 0))
        self.loss.refresh_seconds = 0.0
        self.t_epoch, self.cpu_epoch = time.perf_counter(), time.process_time()

    def on_step_begin(self, args, state, control, **kwargs):
        self.loss.global_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def _timing(self) -> dict:
        # CPU seconds of this process too: on a shared machine they measure the work, wall time the wait.
        return {"train_seconds": round(time.perf_counter() - self.t_epoch, 2),
                "train_cpu_seconds": round(time.process_time() - self.cpu_epoch, 2),
                "corpus_refresh_seconds": round(self.loss.refresh_seconds, 2)}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._record(state, model, **self._timing())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.last_logged_step:  # max_steps stopped mid-epoch
            self._record(state, model, **self._timing())


class RetrieverTrainer(SentenceTransformerTrainer):
    """Resumes LoRA runs from the adapter alone, instead of re-reading the whole backbone."""

    def _load_from_checkpoint(self, checkpoint_path: str, model=None) -> None:
        adapter = Path(checkpoint_path) / "adapter_model.safetensors"
        transformers_model = self.model.transformers_model
        if adapter.exists() and getattr(transformers_model, "_hf_peft_config_loaded", False):
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            result = set_peft_model_state_dict(transformers_model, load_file(str(adapter)))
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"checkpoint {checkpoint_path} does not match the adapter: "
                                   f"{result.unexpected_keys[:3]}")
            return
        super()._load_from_checkpoint(checkpoint_path)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def train_fold(config: Config, fold: int | None) -> dict:
    """Train (or resume, or skip) the retriever of one fold; ``fold=None`` trains on all labelled pairs."""
    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint

    from .data import load_misconceptions

    cfg = config.retriever
    run_dir = Path(config.run_dir)
    out = run_dir / "retriever" / _fold_name(fold)
    log_path = out / "train_log.jsonl"
    info_path = out / "train_info.json"
    train_fp = _train_fingerprint(config, fold)
    trained_fp = (read_json(info_path, default={}) or {}).get("fingerprint")
    if trained_fp == train_fp and (out / "model").is_dir():
        log.info("%s: trained with this config, reused", out)
        return _summary(log_path)
    # Another config's model, adapter, checkpoints and log must be neither reused nor resumed.
    stale = trained_fp != train_fp
    if stale and _is_main_process():
        for name in ("model", "adapter", "checkpoints", log_path.name):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if _is_main_process():
        write_json(info_path, {"fingerprint": train_fp, "status": "training"})
    placement = resolve(config.runtime)
    train, val = _training_rows(config, fold)
    misconceptions = load_misconceptions(run_dir)
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    corpus_texts = misconceptions["MisconceptionName"].tolist()
    checkpoints = out / "checkpoints"
    # Every rank decides alike: a stale fold starts over even where rank 0 has not deleted it yet.
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() and not stale else None
    if resume is None and log_path.exists():
        log_path.unlink()  # a log without a checkpoint belongs to a run that never got far

    set_seed(config.seed)  # LoRA's initialisation draws from the global RNG: same seed, same starting adapter
    model = build_model(cfg, placement)
    sampler = NegativeSampler(corpus_ids, cfg.n_hard_negatives, cfg.hard_negative_ranks, cfg.n_random_negatives,
                              seed=config.seed)
    collator = ContrastiveCollator(preprocess_fn=model.preprocess, sampler=sampler,
                                   query_prompt=model.prompts.get("query"))
    loss = HardNegativeInfoNCE(model, corpus_ids, corpus_texts, sampler, scale=1.0 / cfg.temperature,
                               refresh_steps=cfg.hard_negative_refresh_steps, mini_batch_size=cfg.mini_batch_size,
                               gradient_cache=cfg.gradient_cache, encode_batch_size=cfg.encode_batch_size)
    dataset = Dataset.from_dict({"query": train["QueryText"].tolist(),
                                 "label": train["MisconceptionId"].astype(int).tolist()})
    steps_per_epoch = max(1, -(-len(dataset) // (cfg.batch_size * cfg.grad_accum)))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=int(round(cfg.warmup_ratio * (cfg.max_steps or steps_per_epoch * cfg.epochs))),
        lr_scheduler_type="linear",
        bf16=placement.is_cuda and str(placement.dtype) == "torch.bfloat16",
        fp16=placement.is_cuda and str(placement.dtype) == "torch.float16",
        use_cpu=not placement.is_cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(50, (cfg.max_steps or steps_per_epoch * cfg.epochs) // 5)),
        seed=config.seed,
        report_to="none",
        ddp_backend="gloo" if _world_size() > 1 and not placement.is_cuda else None,
        ddp_find_unused_parameters=False,
        dataloader_drop_last=False,
    )
    callback = EpochLog(loss, val["QueryText"].tolist(), val["MisconceptionId"].astype(int).tolist(), corpus_ids,
                        corpus_texts, log_path, cfg.encode_batch_size)
    trainer = RetrieverTrainer(model=model, args=args, train_dataset=dataset, loss=loss, data_collator=collator,
                               callbacks=[callback])
    log.info("%s: %d training pairs (%d steps/epoch), %d validation pairs%s", _fold_name(fold), len(dataset),
             steps_per_epoch, len(val), f", resuming from {resume}" if resume else "")
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    if _is_main_process():
        save_outputs(model, cfg, placement, out)
        shutil.rmtree(checkpoints, ignore_errors=True)
        write_json(info_path, {"fingerprint": train_fp, "status": "done"})
    _barrier()
    return {**_summary(log_path), "seconds": round(seconds, 1)}


def _train_fingerprint(config: Config, fold: int | None) -> str:
    """What one fold's model depends on: every retriever key, the synthetic rows' settings, the seed,
    the prepared pairs and folds, and the fold. A fold's model is reused only under the same one."""
    resolved = config_to_dict(config)
    run_dir = Path(config.run_dir)
    return fingerprint(resolved["retriever"], resolved.get("synthetic"), config.seed, _fold_name(fold),
                       file_sha256(run_dir / "pairs.parquet"), file_sha256(run_dir / "folds.csv"))


def save_outputs(model: SentenceTransformer, cfg: RetrieverConfig, placement: Placement, out: Path) -> None:
    """Write ``adapter/`` (LoRA) and ``model/`` (merged, full precision) atomically."""
    if not cfg.lora.enabled:
        with atomic_dir(out / "model") as tmp:
            model.save(str(tmp))
        return
    with atomic_dir(out / "adapter") as tmp:
        model.transformers_model.save_pretrained(str(tmp))
    # Merge into a fresh full-precision backbone: right for QLoRA too, where the trained base is 4-bit.
    from peft import PeftModel

    merged = build_model(cfg, placement, trainable=False, load_in_4bit=False)
    transformer = merged[0]
    transformer.model = PeftModel.from_pretrained(transformer.model, str(out / "adapter")).merge_and_unload()
    with atomic_dir(out / "model") as tmp:
        merged.save(str(tmp))


def _summary(log_path: Path) -> dict:
    if not log_path.exists():
        return {}
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    summary = {"log_entries": len(entries)}
    evaluated = [e for e in entries if "val_map@25" in e]
    if evaluated:
        summary.update({"zero_shot_map@25": evaluated[0]["val_map@25"], "final_map@25": evaluated[-1]["val_map@25"]})
    return summary


def run(config: Config) -> dict:
    """Stage 3: one retriever per fold in ``folds.use`` (+ the full fit when ``folds.full_fit``)."""
    backbone_config(config.retriever.backbone)  # fail on a bad backbone before any work
    targets: list[int | None] = list(config.folds.use) + ([None] if config.folds.full_fit else [])
    return {_fold_name(fold): train_fold(config, fold) for fold in targets}


def outputs(config: Config) -> list[Path]:
    root = Path(config.run_dir) / "retriever"
    names = [f"fold_{k}" for k in config.folds.use] + ([FULL] if config.folds.full_fit else [])
    return [root / name / "model" for name in names]

