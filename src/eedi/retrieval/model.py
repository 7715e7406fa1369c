"""The bi-encoder: a sentence-transformers pipeline over a Hugging Face backbone
(mean or last-token pooling, LoRA/QLoRA), and encoding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, prepare_model_for_kbit_training
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling, Router
from transformers import AutoConfig

from eedi.config import RetrieverConfig
from eedi.errors import ConfigError, MissingInputError
from eedi.layout import FULL, RunLayout, model_name
from eedi.progress import library_bars_on_console
from eedi.runtime import Placement, model_kwargs

QUERY_PROMPT = "Instruct: {instruction}\nQuery: "


# --------------------------------------------------------------------------- model


def is_causal_lm(backbone_config) -> bool:
    architectures = getattr(backbone_config, "architectures", None) or []
    return bool(getattr(backbone_config, "is_decoder", False)) or any(a.endswith("ForCausalLM") for a in architectures)


def backbone_config(backbone: str):
    """The backbone's HF config; a clear ConfigError when it is neither a folder nor a reachable hub id."""

    try:
        return AutoConfig.from_pretrained(backbone)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"retriever.backbone: {backbone!r} is neither a model folder nor a reachable "
            f"Hugging Face model id ({first})"
        ) from None


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


def build_model(
    cfg: RetrieverConfig, placement: Placement, trainable: bool = True, load_in_4bit: bool | None = None
) -> SentenceTransformer:
    """The untrained bi-encoder for ``cfg.backbone``, set up for training (fresh LoRA adapters, frozen
    layers) unless ``trainable=False``: then the plain backbone, for zero-shot use or to merge an adapter into."""

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
    transformer = Transformer(
        cfg.backbone,
        model_kwargs=kwargs,
        processor_kwargs={"model_max_length": cfg.max_length},
        modality_config=text_only,
        module_output_name="token_embeddings",
    )
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


def with_frozen_documents(query_model: SentenceTransformer, cfg: RetrieverConfig, placement: Placement):
    """One SentenceTransformer that embeds queries with ``query_model`` and misconceptions with the untouched
    backbone (``retriever.document_tower: frozen``): a sentence-transformers Router, so ``encode_query`` and
    ``encode_document`` route by themselves wherever the saved model is loaded (index, infer, serve, Kaggle)."""
    backbone = build_model(cfg, placement, trainable=False, load_in_4bit=False)
    model = SentenceTransformer(
        modules=[Router.for_query_document(list(query_model), list(backbone))],
        prompts=query_model.prompts,
        device=placement.device,
    )
    model.max_seq_length = cfg.max_length
    return model


def freeze_unused(model: SentenceTransformer) -> list[str]:
    """Freeze the trainable parameters that the sentence embedding never reads (BERT's pooler: sentence-
    transformers pools the token states); returns their names.

    DDP waits for a gradient of every trainable parameter before it averages a step's gradients, and fails
    on the next step when one never comes. Found by one backward pass on a short text; the optimizer skips
    such parameters anyway, so training is unchanged."""
    model.zero_grad(set_to_none=True)
    features = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in model.preprocess(["a b c"]).items()}
    model(features)["sentence_embedding"].float().sum().backward()
    unused = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.grad is None:
            param.requires_grad = False
            unused.append(name)
    model.zero_grad(set_to_none=True)
    return unused


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
        raise ConfigError(
            f"retriever.top_layers: no parameter of {model.transformers_model.__class__.__name__} "
            f"belongs to layers {layers}"
        )


def add_lora(model: SentenceTransformer, cfg: RetrieverConfig, four_bit: bool, layers: list[int] | None) -> None:
    if four_bit:
        # fp32 norms and an input-grad hook, as QLoRA needs; checkpointing is switched on by the Trainer.
        prepare_model_for_kbit_training(model.transformers_model, use_gradient_checkpointing=False)
    targets: list[str] = list(cfg.lora.target_modules)
    if layers is not None:
        # Full module names, not peft's layers_to_transform: its layer regex needs a prefix before
        # "layers.N." and sentence-transformers wraps the bare decoder, whose names start there.
        targets = layer_modules(model.transformers_model, targets, set(layers))
        if not targets:
            raise ConfigError(
                f"retriever.lora.target_modules {cfg.lora.target_modules} match no module of "
                f"layers {layers} of {cfg.backbone}"
            )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        task_type="FEATURE_EXTRACTION",
    )
    try:
        model.add_adapter(lora)
    except ValueError as err:
        if "target modules" in str(err).lower() or "not found" in str(err).lower():
            raise ConfigError(
                f"retriever.lora.target_modules {cfg.lora.target_modules} match no module of "
                f"{cfg.backbone}: {str(err).splitlines()[0]}"
            ) from None
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


def trained_retriever(run_dir: str | Path, folds: Sequence[int]) -> Path:
    """The retriever that infer, the Kaggle package and the service use: the full fit, else the first fold's."""
    layout = RunLayout(run_dir)
    for name in [FULL, *[model_name(k) for k in folds]]:
        if layout.retriever_model(name).is_dir():
            return layout.retriever_model(name)
    raise MissingInputError(
        f"a trained retriever in {layout.root} (full or {[model_name(k) for k in folds]})", "train-retriever"
    )


def load_encoder(path: str | Path, placement: Placement, load_in_4bit: bool = False) -> SentenceTransformer:
    """A trained retriever (a ``model/`` folder written by this stage); ``load_in_4bit``: quantized to
    bitsandbytes NF4 while loading (the Kaggle notebook on 16 GB T4s, retriever.load_in_4bit)."""
    if load_in_4bit:
        return SentenceTransformer(str(path), device=placement.device, model_kwargs=model_kwargs(placement, True))
    return SentenceTransformer(str(path), device=placement.device, model_kwargs={"dtype": placement.dtype})


def _encode(encode, texts: list[str], batch_size: int) -> np.ndarray:
    with library_bars_on_console():
        embeddings = encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 4 * batch_size,
        )
    return embeddings.astype(np.float32)


def encode_queries(model: SentenceTransformer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 query embeddings (with the model's saved query prompt, if any)."""
    return _encode(model.encode_query, texts, batch_size)


def encode_corpus(model: SentenceTransformer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 misconception embeddings (no prompt)."""
    return _encode(model.encode_document, texts, batch_size)
