"""Stage ``quantize``: the merged reranker to 4-bit weights with GPTQ and with AWQ, reloaded and measured.

The user asked for GPTQ and AWQ 4-bit models. The libraries that used to provide them,
``auto-gptq`` and ``autoawq``, are archived upstream and do not install beside torch 2.13, so
both algorithms run through llm-compressor (the vLLM project's maintained implementation):
``GPTQModifier`` for GPTQ and ``AWQModifier`` + ``QuantizationModifier`` for AWQ, both writing a
W4A16 checkpoint (int4 weights in groups, 16-bit activations) in compressed-tensors format,
which vLLM loads natively with its Marlin kernels and transformers loads on any device.

Per run:

1. pick the source reranker (``quantize.source``) and merge its LoRA adapter if only the
   adapter exists (:func:`eedi.rerank.train.merge_adapter`, peft ``merge_and_unload``);
2. check ``quantize.group_size`` against every Linear layer to be quantized, on the meta device
   (no weights read), before any calibration time is spent;
3. calibrate on the reranker's own prompts: windows of the source fold's *training* candidates
   (:func:`eedi.rerank.windows.calibration_prompts`), never validation rows;
4. reload each model and rerank the same validation candidates with each: MAP@25 before and
   after, agreement of the top choice, seconds per window, size on disk.

Outputs: ``quantized/reranker-{method}/`` (HF folder in compressed-tensors format + tokenizer),
``quantized/summary.json``, and ``metrics.json`` entries ``fold_{k}.reranker_{method}`` /
``fold_{k}.reranker_unquantized``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eedi.config import Config
from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
from eedi.data.folds import train_val_split
from eedi.errors import ConfigError, MissingInputError
from eedi.fileio import update_json, write_json
from eedi.layout import FULL, RunLayout, model_name
from eedi.quantize.measure import eval_candidates, measure, score_mae, top1_agreement
from eedi.quantize.methods import checkpoint_format, quantize_model, quantized_layer_widths, validate_group_size
from eedi.rerank.train import merge_adapter
from eedi.rerank.windows import calibration_prompts, read_candidates

log = logging.getLogger(__name__)


def resolve_source(config: Config) -> tuple[str, int | None]:
    """("fold_{k}", k) or ("full", None) for quantize.source."""
    source = config.quantize.source
    if source == "auto":
        full = RunLayout(config.run_dir).reranker(FULL)
        has_full = RunLayout.merged_dir(full).is_dir() or RunLayout.adapter_dir(full).is_dir()
        source = FULL if has_full else config.folds.use[0]
    if source == FULL:
        return FULL, None
    if source not in config.folds.use:
        raise ConfigError(
            f"quantize.source={source}: fold {source} is not in folds.use={config.folds.use}, "
            "so it has no reranker or candidates"
        )
    return model_name(source), source


def source_model(config: Config, name: str) -> Path:
    """The merged reranker ``reranker/{name}/merged``, merged from ``adapter/`` first if that is all there is."""
    base = RunLayout(config.run_dir).reranker(name)
    merged, adapter = RunLayout.merged_dir(base), RunLayout.adapter_dir(base)
    if (merged / "config.json").exists():
        return merged
    if (adapter / "adapter_config.json").exists():
        log.info("merging the LoRA adapter %s into its base", adapter)
        return merge_adapter(adapter, merged, config)
    raise MissingInputError(base, "train-reranker", "neither a merged model nor an adapter")


def run(config: Config) -> dict:
    """Quantize the source reranker with every method in quantize.methods and measure each."""
    qc = config.quantize
    layout = RunLayout(config.run_dir)
    if not qc.enabled:
        write_json(layout.quantized_summary, {"enabled": False})
        return {"enabled": False}
    name, fold = resolve_source(config)
    model_dir = source_model(config, name)
    widths = quantized_layer_widths(model_dir, qc.ignore)
    validate_group_size(widths, qc.group_size)

    prompts = calibration_prompts(config, fold, qc.calibration.n_samples, qc.calibration.max_seq_length)
    log.info("calibrating on %d reranker prompts of %s's training part", len(prompts), name)
    # The full model saw every fold's validation rows in training: its numbers are in-sample.
    eval_fold = config.folds.use[0] if fold is None else fold
    pairs, misconceptions = load_pairs(layout.root), load_misconceptions(layout.root)
    candidates = eval_candidates(
        read_candidates(layout.candidates(model_name(eval_fold))), qc.eval_max_pairs, config.seed
    )
    seen = set(train_val_split(pairs, load_folds(layout.root), eval_fold)[0]["MisconceptionId"].astype(int))

    before, reference = measure(config, model_dir, candidates, pairs, misconceptions, seen)
    results, checkpoints = {"unquantized": before}, {}
    for method in qc.methods:
        out_dir = layout.quantized_model(method)
        log.info("quantizing %s with %s (%s, group size %d)", model_dir, method, qc.scheme, qc.group_size)
        seconds = quantize_model(model_dir, out_dir, method, prompts, config)
        metrics, reranked = measure(config, out_dir, candidates, pairs, misconceptions, seen)
        metrics["size_ratio"] = metrics["size_bytes"] / before["size_bytes"]
        metrics["quantize_seconds"] = round(seconds, 1)
        metrics["top1_agreement"] = top1_agreement(reference, reranked)
        metrics["score_mae"] = score_mae(reference, reranked)
        results[method], checkpoints[method] = metrics, checkpoint_format(out_dir)
        log.info(
            "%s: MAP@25 %.4f -> %.4f, size x%.3f, %.3fs/window, top-1 agreement %.3f",
            method,
            before["map@25"],
            metrics["map@25"],
            metrics["size_ratio"],
            metrics["seconds_per_window"],
            metrics["top1_agreement"],
        )

    update_json(layout.metrics, {model_name(eval_fold): {f"reranker_{key}": value for key, value in results.items()}})
    summary = {
        "enabled": True,
        "source": name,
        "source_dir": str(model_dir),
        "eval_fold": eval_fold,
        "in_sample": fold is None,
        "eval_pairs": int(candidates["QuestionId_Answer"].nunique()),
        "calibration_prompts": len(prompts),
        "scheme": qc.scheme,
        "group_size": qc.group_size,
        "ignore": list(qc.ignore),
        "quantized_layers": len(widths),
        "backend": qc.backend,
        "models": results,
        "checkpoints": checkpoints,
    }
    write_json(layout.quantized_summary, summary)
    headline = ("map@25", "size_ratio", "seconds_per_window", "top1_agreement")
    return {
        "source": name,
        "eval_fold": eval_fold,
        **{key: {k: value[k] for k in headline if k in value} for key, value in results.items()},
    }
