"""Stage 6 (quantize): the merged reranker to 4-bit weights with GPTQ and with AWQ, reloaded and measured.

The user asked for GPTQ and AWQ 4-bit models. The libraries that used to provide them,
``auto-gptq`` and ``autoawq``, are archived upstream and do not install beside torch 2.13, so
both algorithms run through llm-compressor (the vLLM project's maintained implementation):
``GPTQModifier`` for GPTQ and ``AWQModifier`` + ``QuantizationModifier`` for AWQ, both writing a
W4A16 checkpoint (int4 weights in groups, 16-bit activations) in compressed-tensors format,
which vLLM loads natively with its Marlin kernels and transformers loads on any device.

Per run:

1. pick the source reranker (``quantize.source``) and merge its LoRA adapter if only the
   adapter exists (:func:`eedi.reranker.merge_adapter`, peft ``merge_and_unload``);
2. check ``quantize.group_size`` against every Linear layer to be quantized, on the meta device
   (no weights read), before any calibration time is spent;
3. calibrate on the reranker's own prompts: windows of the source fold's *training* candidates
   (:func:`eedi.reranker.calibration_prompts`), never validation rows;
4. reload each model and rerank the same validation candidates with each: MAP@25 before and
   after, agreement of the top choice, seconds per window, size on disk.

Outputs: ``quantized/reranker-{method}/`` (HF folder in compressed-tensors format + tokenizer),
``quantized/summary.json``, and ``metrics.json`` entries ``fold_{k}.reranker_{method}`` /
``fold_{k}.reranker_unquantized``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from functools import reduce
from pathlib import Path
from typing import Iterable, Sequence
from unittest import mock

import numpy as np
import pandas as pd

from .config import Config, ConfigError, QuantizeConfig
from .data import load_folds, load_misconceptions, load_pairs, train_val_split
from .io import atomic_dir, read_json, update_json, write_json
from .runtime import resolve

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
    from accelerate import init_empty_weights
    from compressed_tensors.utils import match_named_modules
    from transformers import AutoConfig, AutoModelForCausalLM

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
    lines = [f"quantize.group_size={group_size} does not divide the input width of {len(bad)} of the "
             f"{len(widths)} layers to quantize:"]
    for width, names in sorted(by_width.items()):
        shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
        lines.append(f"  width {width} ({len(names)} layers): {shown}")
    fits = working_group_sizes(widths.values())
    lines.append(f"group sizes that divide every layer: {', '.join(map(str, fits)) or 'none of ' + str(GROUP_SIZES)}"
                 "; or add the layers to quantize.ignore")
    raise GroupSizeError("\n".join(lines))


# --------------------------------------------------------------------------- quantization


def build_recipe(qc: QuantizeConfig, method: str) -> list:
    """llm-compressor modifiers for ``method``: W4A16-style scheme with ``qc.group_size``, ``qc.ignore`` kept."""
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
        return [AWQModifier(n_grid=qc.awq.n_grid, duo_scaling=qc.awq.duo_scaling),
                QuantizationModifier(config_groups=groups, ignore=list(qc.ignore))]
    raise ValueError(f"unknown quantization method {method!r}; expected 'gptq' or 'awq'")


def _calibration_dataset(tokenizer, prompts: Sequence[str], max_length: int):
    from datasets import Dataset

    from .reranker_scoring import encode_prompts

    ids = encode_prompts(tokenizer, prompts, max_length)
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


def _pinning_patch():
    """llm-compressor 0.14's AWQ pins its activation cache in page-locked memory for fast copies to the
    GPU, which raises "Cannot access accelerator device" on a machine without one; pinning serves
    only those copies, so there it is skipped."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return contextlib.nullcontext()
    return mock.patch.object(IntermediatesCache, "pin_memory", lambda self, *args, **kwargs: None)


def quantize_model(model_dir: str | Path, out_dir: str | Path, method: str, prompts: Sequence[str],
                   config: Config) -> float:
    """Quantize the HF model in ``model_dir`` with ``method`` on ``prompts``; write a compressed-tensors
    folder (+ tokenizer) to ``out_dir`` atomically. Returns the seconds spent.

    The model is loaded on the CPU in ``runtime.dtype``; llm-compressor's sequential pipeline moves
    one decoder layer at a time to the GPU when there is one, so a 32B model needs one layer of GPU memory.
    """
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    qc = config.quantize
    placement = resolve(config.runtime)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=placement.dtype)
    dataset = _calibration_dataset(tokenizer, prompts, qc.calibration.max_seq_length)
    t0 = time.time()
    with atomic_dir(out_dir) as tmp, _pinning_patch():
        oneshot(model=model, tokenizer=tokenizer, recipe=build_recipe(qc, method), dataset=dataset,
                num_calibration_samples=len(dataset), max_seq_length=qc.calibration.max_seq_length,
                shuffle_calibration_samples=False, output_dir=str(tmp))
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
        raise ValueError(f"{model_dir}/config.json: quantization_config.quant_method is "
                         f"{quant.get('quant_method')!r}, expected 'compressed-tensors'")
    weights = [group.get("weights") or {} for group in quant.get("config_groups", {}).values()]
    return {"quant_method": quant["quant_method"], "format": quant.get("format"),
            "num_bits": sorted({w.get("num_bits") for w in weights}),
            "group_size": sorted({w.get("group_size") for w in weights}), "ignore": quant.get("ignore", [])}


def weights_bytes(model_dir: str | Path) -> int:
    """Bytes of the weight files in an HF folder (tokenizer and configs excluded)."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- measurement


class TimedScorer:
    """Wraps a reranker label scorer, timing its forward passes and counting the windows it scores."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.tokenizer = scorer.tokenizer
        self.seconds = 0.0
        self.windows = 0

    def label_logprobs(self, prompt_ids, label_ids) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.scorer.label_logprobs(prompt_ids, label_ids)
        self.seconds += time.perf_counter() - t0
        self.windows += len(prompt_ids)
        return out


def top_choices(reranked: pd.DataFrame) -> pd.Series:
    """Per pair, the candidate with the highest reranker score (ties: the better retriever rank)."""
    scored = reranked.dropna(subset=["reranker_score"]).sort_values(
        ["QuestionId_Answer", "reranker_score", "rank"], ascending=[True, False, True], kind="stable")
    return scored.drop_duplicates("QuestionId_Answer").set_index("QuestionId_Answer")["MisconceptionId"]


def top1_agreement(reference: pd.DataFrame, other: pd.DataFrame) -> float:
    """Share of pairs whose top reranker choice is the same in both tables."""
    a, b = top_choices(reference), top_choices(other)
    keys = a.index.intersection(b.index)
    return float((a[keys] == b[keys]).mean()) if len(keys) else float("nan")


def score_mae(reference: pd.DataFrame, other: pd.DataFrame) -> float:
    """Mean absolute difference of the reranker scores (label probabilities) of the same candidates."""
    key = ["QuestionId_Answer", "MisconceptionId"]
    both = reference[key + ["reranker_score"]].merge(other[key + ["reranker_score"]], on=key).dropna()
    return float((both["reranker_score_x"] - both["reranker_score_y"]).abs().mean())


def measure(config: Config, model_dir: Path, candidates: pd.DataFrame, pairs: pd.DataFrame,
            misconceptions: pd.DataFrame, seen: set[int]) -> tuple[dict, pd.DataFrame]:
    """Load ``model_dir`` with ``quantize.backend``, rerank ``candidates``; ranking metrics + seconds per window."""
    from .reranker import fold_metrics, rerank
    from .reranker_scoring import make_scorer

    engine = make_scorer(model_dir, config.quantize.backend, config)
    # One untimed pair first: one-off costs (transformers unpacks compressed-tensors weights on the first
    # forward; CUDA loads its kernels on first use) would otherwise be charged to whichever model goes first.
    first = candidates["QuestionId_Answer"].iloc[0]
    rerank(config, model_dir, candidates[candidates["QuestionId_Answer"] == first], pairs, misconceptions,
           scorer=engine)
    scorer = TimedScorer(engine)
    reranked = rerank(config, model_dir, candidates, pairs, misconceptions, scorer=scorer)
    metrics = fold_metrics(reranked, pairs, "final_rank", seen)
    metrics.update(windows=scorer.windows, seconds_per_window=scorer.seconds / max(scorer.windows, 1),
                   size_bytes=weights_bytes(model_dir))
    del scorer, engine
    _free_memory()
    return metrics, reranked


def eval_candidates(candidates: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """The validation rows of a fold's candidates, limited to a seeded random subset of ``max_pairs`` pairs."""
    val = candidates[candidates["part"] == "val"]
    keys = np.array(sorted(val["QuestionId_Answer"].unique()))
    if max_pairs is not None and len(keys) > max_pairs:
        keys = np.random.default_rng(seed).choice(keys, size=max_pairs, replace=False)
        val = val[val["QuestionId_Answer"].isin(set(keys))]
    return val


# --------------------------------------------------------------------------- stage


def resolve_source(config: Config) -> tuple[str, int | None]:
    """("fold_{k}", k) or ("full", None) for quantize.source."""
    source = config.quantize.source
    if source == "auto":
        full = Path(config.run_dir) / "reranker" / "full"
        source = "full" if (full / "merged").is_dir() or (full / "adapter").is_dir() else config.folds.use[0]
    if source == "full":
        return "full", None
    if source not in config.folds.use:
        raise ConfigError(f"quantize.source={source}: fold {source} is not in folds.use={config.folds.use}, "
                          "so it has no reranker or candidates")
    return f"fold_{source}", source


def source_model(config: Config, name: str) -> Path:
    """The merged reranker ``reranker/{name}/merged``, merged from ``adapter/`` first if that is all there is."""
    from .reranker import merge_adapter

    base = Path(config.run_dir) / "reranker" / name
    merged, adapter = base / "merged", base / "adapter"
    if (merged / "config.json").exists():
        return merged
    if (adapter / "adapter_config.json").exists():
        log.info("merging the LoRA adapter %s into its base", adapter)
        return merge_adapter(adapter, merged, config)
    raise FileNotFoundError(f"no reranker in {base} (neither merged/ nor adapter/): run `eedi train-reranker` first")


def run(config: Config) -> dict:
    """Stage 6: quantize the source reranker with every method in quantize.methods and measure each."""
    from .reranker import calibration_prompts, read_candidates

    qc = config.quantize
    run_dir = Path(config.run_dir)
    out_root = run_dir / "quantized"
    if not qc.enabled:
        write_json(out_root / "summary.json", {"enabled": False})
        return {"enabled": False}
    name, fold = resolve_source(config)
    model_dir = source_model(config, name)
    widths = quantized_layer_widths(model_dir, qc.ignore)
    validate_group_size(widths, qc.group_size)

    prompts = calibration_prompts(config, fold, qc.calibration.n_samples, qc.calibration.max_seq_length)
    log.info("calibrating on %d reranker prompts of %s's training part", len(prompts), name)
    # The full model saw every fold's validation rows in training: its numbers are in-sample.
    eval_fold = config.folds.use[0] if fold is None else fold
    pairs, misconceptions = load_pairs(run_dir), load_misconceptions(run_dir)
    candidates = eval_candidates(read_candidates(run_dir / "candidates" / f"fold_{eval_fold}.parquet"),
                                 qc.eval_max_pairs, config.seed)
    seen = set(train_val_split(pairs, load_folds(run_dir), eval_fold)[0]["MisconceptionId"].astype(int))

    before, reference = measure(config, model_dir, candidates, pairs, misconceptions, seen)
    results, checkpoints = {"unquantized": before}, {}
    for method in qc.methods:
        out_dir = out_root / f"reranker-{method}"
        log.info("quantizing %s with %s (%s, group size %d)", model_dir, method, qc.scheme, qc.group_size)
        seconds = quantize_model(model_dir, out_dir, method, prompts, config)
        metrics, reranked = measure(config, out_dir, candidates, pairs, misconceptions, seen)
        metrics["size_ratio"] = metrics["size_bytes"] / before["size_bytes"]
        metrics["quantize_seconds"] = round(seconds, 1)
        metrics["top1_agreement"] = top1_agreement(reference, reranked)
        metrics["score_mae"] = score_mae(reference, reranked)
        results[method], checkpoints[method] = metrics, checkpoint_format(out_dir)
        log.info("%s: MAP@25 %.4f -> %.4f, size x%.3f, %.3fs/window, top-1 agreement %.3f", method,
                 before["map@25"], metrics["map@25"], metrics["size_ratio"], metrics["seconds_per_window"],
                 metrics["top1_agreement"])

    update_json(run_dir / "metrics.json", {f"fold_{eval_fold}": {f"reranker_{key}": value
                                                                  for key, value in results.items()}})
    summary = {
        "enabled": True, "source": name, "source_dir": str(model_dir), "eval_fold": eval_fold,
        "in_sample": fold is None, "eval_pairs": int(candidates["QuestionId_Answer"].nunique()),
        "calibration_prompts": len(prompts), "scheme": qc.scheme, "group_size": qc.group_size,
        "ignore": list(qc.ignore), "quantized_layers": len(widths), "backend": qc.backend, "models": results,
        "checkpoints": checkpoints,
    }
    write_json(out_root / "summary.json", summary)
    headline = ("map@25", "size_ratio", "seconds_per_window", "top1_agreement")
    return {"source": name, "eval_fold": eval_fold,
            **{key: {k: value[k] for k in headline if k in value} for key, value in results.items()}}
