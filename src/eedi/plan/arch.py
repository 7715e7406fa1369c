"""Architecture configs, offline, and the model built from one on the meta device (no weights).

A config's model value is a local folder (its ``config.json`` is read directly) or a model id. Ids resolve
to the published ``config.json`` fields shipped in ``archs/*.json`` (each lists the ids it stands for in
``_eedi_model_ids``; a base model and its Instruct variant share one architecture), then to the Hugging Face
cache. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from eedi.errors import ConfigError

ARCHS = Path(__file__).resolve().parent / "archs"


@cache
def shipped_archs() -> dict[str, Path]:
    """Model id (lower case) -> shipped architecture file."""
    found = {}
    for path in sorted(ARCHS.glob("*.json")):
        for model_id in json.loads(path.read_text(encoding="utf-8")).get("_eedi_model_ids", []):
            found[model_id.lower()] = path
    return found


def find_arch(model: str, key: str) -> tuple[dict, str]:
    """The ``config.json`` fields of ``model`` and where they came from; ConfigError naming ``key`` if none."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8")), str(path / "config.json")
    shipped = shipped_archs().get(model.lower())
    if shipped is not None:
        fields = json.loads(shipped.read_text(encoding="utf-8"))
        return {k: v for k, v in fields.items() if k != "_eedi_model_ids"}, f"eedi/plan/archs/{shipped.name}"
    try:
        # Lazy: only for ids that are not shipped
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # an id the hub client refuses (a path with odd characters): treat as not cached
        cached = None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8")), cached
    raise ConfigError(
        f"{key}={model!r}: no architecture config: not a local folder with config.json, not one of the shipped "
        f"ones ({', '.join(sorted(shipped_archs()))}) and not in the Hugging Face cache"
    )


@dataclass(frozen=True)
class Arch:
    """What the memory arithmetic needs from one model, read off the meta-device instance."""

    source: str
    model_type: str
    params: int  # every parameter, tied ones once
    linear_params: dict[str, int]  # module name -> weight numel of every nn.Linear (incl. lm_head)
    linear_shapes: dict[str, tuple[int, int]]  # module name -> (in_features, out_features)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    quantization: dict | None  # the checkpoint's quantization_config (AWQ/GPTQ checkpoints)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def build_meta(fields: dict, causal_lm: bool):
    """The transformers model of ``fields`` on the meta device: real module tree and parameter shapes, no memory."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    fields = dict(fields)
    quantization = fields.pop("quantization_config", None)  # the meta model is the unquantized architecture
    model_type = fields.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **fields)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    try:
        from accelerate import init_empty_weights
    except ImportError:  # the inference environment has no accelerate: torch's own meta device does the same
        init_empty_weights = None
    if init_empty_weights is not None:
        with init_empty_weights(include_buffers=True):
            model = auto.from_config(hf_config)
    else:
        with torch.device("meta"):
            model = auto.from_config(hf_config)
    return model, hf_config, quantization


@cache
def _arch_cached(fields_json: str, source: str, causal_lm: bool) -> Arch:
    fields = json.loads(fields_json)
    model, hf_config, quantization = build_meta(fields, causal_lm)
    text = hf_config.get_text_config()
    linear_params, linear_shapes = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear_params[name] = module.weight.numel()
            linear_shapes[name] = (module.in_features, module.out_features)
    heads = text.num_attention_heads
    return Arch(
        source=source,
        model_type=fields["model_type"],
        params=sum(p.numel() for p in model.parameters()),
        linear_params=linear_params,
        linear_shapes=linear_shapes,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
        quantization=quantization,
    )


def load_arch(model: str, key: str, causal_lm: bool) -> Arch:
    """``model`` (folder or id) as an :class:`Arch`; ``causal_lm``: with the LM head (reranker, generator)."""
    fields, source = find_arch(model, key)
    fields = {k: v for k, v in fields.items() if not k.startswith("_") and k not in ("architectures", "auto_map")}
    if "model_type" not in fields:
        raise ConfigError(f"{key}={model!r}: {source} has no model_type")
    return _arch_cached(json.dumps(fields, sort_keys=True), source, causal_lm)
