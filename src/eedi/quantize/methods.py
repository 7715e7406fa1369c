"""GPTQ and AWQ W4A16 through llm-compressor: group-size checks on the meta device, recipes, calibration,
checkpoint facts.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Iterable, Sequence
from functools import reduce
from pathlib import Path
from unittest import mock

import torch
from accelerate import init_empty_weights
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from eedi.config import Config, QuantizeConfig
from eedi.errors import ConfigError
from eedi.fileio import atomic_dir, read_json
from eedi.progress import library_bars_on_console
from eedi.rerank.scoring import encode_prompts
from eedi.runtime import resolve

log = logging.getLogger(__name__)

# Group sizes offered when the configured one does not fit; vLLM's Marlin kernels take 32, 64 and 128.
GROUP_SIZES = (256, 128, 64, 32, 16)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class GroupSizeError(ConfigError):
    """quantize.group_size does not divide the input width of some layer to be quantized."""


# --------------------------------------------------------------------------- group size


def quantized_layer_widths(model_dir: str | Path, ignore: Sequence[str]) -> dict[str, int]:
    """Input width of every Linear layer llm-compressor would quantize (all but ``ignore``), by module name.

    The model is built on the meta device from its config alone (no weights are read, whatever the
    model size), and matching goes through compressed-tensors' own ``match_named_modules``
    (names, class names and "re:" patterns), i.e. exactly the layers the modifiers will take.
    """
    # Lazy: llm-compressor lives in the training environment only and takes seconds to import.
    from compressed_tensors.utils import match_named_modules

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return {name: int(module.in_features) for name, module in match_named_modules(model, ["Linear"], list(ignore))}


def working_group_sizes(widths: Iterable[int], candidates: Sequence[int] = GROUP_SIZES) -> list[int]:
    """The candidate group sizes that divide every width, largest first."""
    common = reduce(math.gcd, widths, 0)
    return [size for size in candidates if common and common % size == 0]


def validate_group_size(widths: dict[str, int], group_size: int) -> None:
    """Raise :class:`GroupSizeError` listing the layers whose input width ``group_size`` does not divide,
    and the group sizes that would fit every layer."""
    if not widths:
        raise GroupSizeError("quantize.ignore leaves no Linear layer to quantize")
    bad = {name: width for name, width in widths.items() if width % group_size}
    if not bad:
        return
    by_width: dict[int, list[str]] = {}
    for name, width in bad.items():
        by_width.setdefault(width, []).append(name)
    lines = [
        f"quantize.group_size={group_size} does not divide the input width of {len(bad)} of the "
        f"{len(widths)} layers to quantize:"
    ]
    for width, names in sorted(by_width.items()):
        shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
        lines.append(f"  width {width} ({len(names)} layers): {shown}")
    fits = working_group_sizes(widths.values())
    lines.append(
        f"group sizes that divide every layer: {', '.join(map(str, fits)) or 'none of ' + str(GROUP_SIZES)}"
        "; or add the layers to quantize.ignore"
    )
    raise GroupSizeError("\n".join(lines))


# --------------------------------------------------------------------------- quantization


def build_recipe(qc: QuantizeConfig, method: str) -> list:
    """llm-compressor modifiers for ``method``: W4A16-style scheme with ``qc.group_size``, ``qc.ignore`` kept."""
    # Lazy: llm-compressor lives in the training environment only and takes seconds to import.
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    scheme = preset_name_to_scheme(qc.scheme, ["Linear"])
    scheme.weights.group_size = qc.group_size
    groups = {"group_0": scheme}
    if method == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=list(qc.ignore), dampening_frac=qc.gptq.dampening_frac)]
    if method == "awq":
        # AWQ only rescales channels; the quantization itself is the plain modifier that follows it.
        return [
            AWQModifier(n_grid=qc.awq.n_grid, duo_scaling=qc.awq.duo_scaling),
            QuantizationModifier(config_groups=groups, ignore=list(qc.ignore)),
        ]
    raise ValueError(f"unknown quantization method {method!r}; expected 'gptq' or 'awq'")


def _calibration_dataset(tokenizer, prompts: Sequence[str], max_length: int):

    ids = encode_prompts(tokenizer, prompts, max_length)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


def _pinning_patch():
    """llm-compressor 0.14's AWQ pins its activation cache in page-locked memory for fast copies to the
    GPU, which raises "Cannot access accelerator device" on a machine without one; pinning serves
    only those copies, so there it is skipped."""
    # Lazy: llm-compressor lives in the training environment only and takes seconds to import.
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return contextlib.nullcontext()
    return mock.patch.object(IntermediatesCache, "pin_memory", lambda self, *args, **kwargs: None)


def quantize_model(
    model_dir: str | Path, out_dir: str | Path, method: str, prompts: Sequence[str], config: Config
) -> float:
    """Quantize the HF model in ``model_dir`` with ``method`` on ``prompts``; write a compressed-tensors
    folder (+ tokenizer) to ``out_dir`` atomically. Returns the seconds spent.

    The model is loaded on the CPU in ``runtime.dtype``; llm-compressor's sequential pipeline moves
    one decoder layer at a time to the GPU when there is one, so a 32B model needs one layer of GPU memory.
    """
    # Lazy: llm-compressor lives in the training environment only and takes seconds to import.
    from llmcompressor import oneshot

    qc = config.quantize
    placement = resolve(config.runtime)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=placement.dtype)
    dataset = _calibration_dataset(tokenizer, prompts, qc.calibration.max_seq_length)
    t0 = time.time()
    with atomic_dir(out_dir) as tmp, _pinning_patch(), library_bars_on_console():
        oneshot(
            model=model,
            tokenizer=tokenizer,
            recipe=build_recipe(qc, method),
            dataset=dataset,
            num_calibration_samples=len(dataset),
            max_seq_length=qc.calibration.max_seq_length,
            shuffle_calibration_samples=False,
            output_dir=str(tmp),
        )
    seconds = time.time() - t0
    del model
    _free_memory()
    return seconds


def checkpoint_format(model_dir: str | Path) -> dict:
    """``quant_method`` / ``format`` / bits / group size of a quantized HF folder; raises unless it is a
    compressed-tensors checkpoint (what vLLM loads without conversion)."""
    config = read_json(Path(model_dir) / "config.json", default={}) or {}
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") != "compressed-tensors":
        raise ValueError(
            f"{model_dir}/config.json: quantization_config.quant_method is "
            f"{quant.get('quant_method')!r}, expected 'compressed-tensors'"
        )
    weights = [group.get("weights") or {} for group in quant.get("config_groups", {}).values()]
    return {
        "quant_method": quant["quant_method"],
        "format": quant.get("format"),
        "num_bits": sorted({w.get("num_bits") for w in weights}),
        "group_size": sorted({w.get("group_size") for w in weights}),
        "ignore": quant.get("ignore", []),
    }


def weights_bytes(model_dir: str | Path) -> int:
    """Bytes of the weight files in an HF folder (tokenizer and configs excluded)."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
