"""Stage ``evaluate``: gather every fold's metrics, average them, render the report.

The per-fold numbers are written by the stages that produce them (``index`` writes
``fold_k.retriever``, ``train-reranker`` writes ``fold_k.reranker``, ``quantize`` writes
``fold_k.reranker_<method>``); this stage checks that every fold in ``folds.use`` has them,
adds ``mean`` (the average over those folds) to ``metrics.json`` and writes ``report.html``.
"""

from __future__ import annotations

import logging

import numpy as np

from eedi.config import Config
from eedi.errors import MissingInputError
from eedi.evaluation.metrics import format_mix
from eedi.evaluation.report import build_report
from eedi.fileio import read_json, update_json
from eedi.layout import RunLayout, model_name

log = logging.getLogger(__name__)

HEADLINE = ("map@25_mix", "map@25", "recall@25", "map@25_seen", "map@25_unseen")


def average_folds(metrics: dict, folds: list[int]) -> dict[str, dict[str, float]]:
    """{model: {metric: mean over folds}} for every model block present in all given folds."""
    blocks = [metrics[model_name(k)] for k in folds]
    models = set.intersection(*(set(b) for b in blocks)) if blocks else set()
    mean: dict[str, dict[str, float]] = {}
    for model in sorted(models):
        keys = set.intersection(*(set(b[model]) for b in blocks))
        values = {
            key: float(np.mean([b[model][key] for b in blocks]))
            for key in sorted(keys)
            if all(isinstance(b[model][key], (int, float)) for b in blocks)
        }
        mean[model] = values
    return mean


def run(config: Config) -> dict:
    layout = RunLayout(config.run_dir)
    metrics = read_json(layout.metrics, default={}) or {}
    missing = [k for k in config.folds.use if "retriever" not in metrics.get(model_name(k), {})]
    if missing:
        raise MissingInputError(
            f"retriever metrics for fold(s) {missing} in {layout.metrics}",
            "index",
            f"folds.use={list(config.folds.use)}",
        )
    mean = average_folds(metrics, list(config.folds.use))
    update_json(layout.metrics, {"mean": mean})
    report = build_report(layout.root)
    for model, values in mean.items():
        log.info(
            "mean over folds %s: %-20s MAP@25 (mix) %s, MAP@25 %.4f",
            config.folds.use,
            model,
            format_mix(values),
            values.get("map@25", float("nan")),
        )
    log.info("report: %s", report)
    return {
        "mean": {m: {k: v for k, v in vals.items() if k in HEADLINE} for m, vals in mean.items()},
        "report": str(report),
    }
