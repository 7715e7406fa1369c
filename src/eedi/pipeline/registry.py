"""The stage registry: every stage in order, with what it reads, what it writes and where it runs.

Each stage is a function ``run(config) -> summary`` in one library module, plus the list
of config sections and upstream stages it depends on (for its fingerprint) and the
output paths it promises (for the manifest and for skipping). ``scripts/NN_*.py`` and
``eedi <stage>`` both call :func:`eedi.pipeline.runner.run_stage`; ``eedi run`` calls every stage in order.

Stages live on one of two sides, because vLLM and llm-compressor pin different
versions of compressed-tensors and cannot share one environment (docs/architecture.md, "Two
environments"). ``eedi run`` starts each stage with the interpreter of its side, taken
from ``EEDI_TRAIN_PYTHON`` / ``EEDI_INFER_PYTHON`` (default: the current interpreter).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eedi.config import Config, config_to_dict
from eedi.errors import ConfigError
from eedi.layout import FULL, RunLayout, model_name
from eedi.manifest import Manifest, fingerprint, input_hashes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    target: str
    """'module:function' taking the Config and returning a JSON-able summary."""
    side: Literal["train", "infer"]
    sections: tuple[str, ...]
    """Config sections whose values change this stage's output."""
    upstream: tuple[str, ...] = ()
    """Stages whose outputs this one reads: their fingerprints are part of this one's."""
    outputs: Callable[[Config], list[Path]] = field(default=lambda cfg: [])
    requires: tuple[str, ...] | None = None
    """Upstream stages that must have run first (default: all of ``upstream``). Optional inputs,
    such as synthetic rows or quantized models, are upstream but not required."""
    distributed: bool = False
    """Trains on several processes (DDP through the Trainer): ``eedi run`` starts it under torchrun when
    ``runtime.nproc_per_node`` > 1, and only rank 0 records it in the manifest."""

    @property
    def required(self) -> tuple[str, ...]:
        return self.upstream if self.requires is None else self.requires

    def function(self) -> Callable[[Config], dict]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


def _layout(cfg: Config) -> RunLayout:
    return RunLayout(cfg.run_dir)


def _fold_names(cfg: Config) -> list[str]:
    return [model_name(k) for k in cfg.folds.use]


def _prepare_outputs(cfg: Config) -> list[Path]:
    lay = _layout(cfg)
    return [lay.pairs, lay.misconceptions, lay.folds, lay.prepare_summary]


def _synthesize_outputs(cfg: Config) -> list[Path]:
    lay = _layout(cfg)
    return [lay.synthetic_rows, lay.synthetic_rejected, lay.synthetic_summary]


def _retriever_outputs(cfg: Config) -> list[Path]:
    names = _fold_names(cfg) + ([FULL] if cfg.folds.full_fit else [])
    return [_layout(cfg).retriever_model(n) for n in names]


def _index_outputs(cfg: Config) -> list[Path]:
    lay = _layout(cfg)
    return [lay.metrics, *[p for n in _fold_names(cfg) for p in (lay.index(n), lay.candidates(n))]]


def _reranker_outputs(cfg: Config) -> list[Path]:
    if not cfg.reranker.enabled:
        return []
    lay = _layout(cfg)
    names = _fold_names(cfg)
    return [
        lay.metrics,
        *[p for n in names for p in (lay.reranker_merged(n), lay.reranked(n))],
        *([lay.reranker_merged(FULL)] if cfg.folds.full_fit else []),
    ]


def _quantize_outputs(cfg: Config) -> list[Path]:
    lay = _layout(cfg)
    if not cfg.quantize.enabled:
        return [lay.quantized_summary]
    return [lay.quantized_summary, lay.metrics, *[lay.quantized_model(m) for m in cfg.quantize.methods]]


def _evaluate_outputs(cfg: Config) -> list[Path]:
    lay = _layout(cfg)
    return [lay.metrics, lay.report]


def _infer_outputs(cfg: Config) -> list[Path]:
    # submission.csv exists only when data.dir has a test.csv; the manifest records what was written
    lay = _layout(cfg)
    return [lay.report, *([lay.submission] if (Path(cfg.data.dir) / "test.csv").exists() else [])]


# Ordered as the pipeline runs; scripts/NN_<stage>.py follow the same order and names.
STAGES: list[Stage] = [
    Stage(
        "prepare",
        "validate the Kaggle CSVs, pivot to (question, wrong answer) pairs, assign folds",
        "eedi.data.stage:run",
        "train",
        ("data", "folds"),
        outputs=_prepare_outputs,
    ),
    Stage(
        "synthesize",
        "generate questions for misconceptions with few or no training examples (vLLM)",
        "eedi.synthesis.stage:run",
        "infer",
        ("synthetic", "data", "runtime"),
        upstream=("prepare",),
        outputs=_synthesize_outputs,
    ),
    Stage(
        "train-retriever",
        "fine-tune the bi-encoder retriever per fold (hard + random + in-batch negatives)",
        "eedi.retrieval.stage:train",
        "train",
        ("retriever", "folds", "data", "synthetic"),
        upstream=("prepare", "synthesize"),
        requires=("prepare",),
        outputs=_retriever_outputs,
        distributed=True,
    ),
    Stage(
        "index",
        "embed the misconceptions into a FAISS index, write top-K candidates and retriever metrics",
        "eedi.retrieval.stage:index",
        "train",
        ("retriever", "index", "folds"),
        upstream=("train-retriever",),
        outputs=_index_outputs,
    ),
    Stage(
        "train-reranker",
        "fine-tune the listwise LoRA reranker per fold, rerank its validation candidates",
        "eedi.rerank.stage:run",
        "train",
        ("reranker", "folds", "data", "synthetic"),
        upstream=("index", "synthesize"),
        requires=("index",),
        outputs=_reranker_outputs,
        distributed=True,
    ),
    Stage(
        "quantize",
        "merge the reranker, quantize it to 4-bit weights with GPTQ and AWQ, reload and measure",
        "eedi.quantize.stage:run",
        "train",
        ("quantize", "reranker", "folds"),
        upstream=("train-reranker",),
        outputs=_quantize_outputs,
    ),
    Stage(
        "evaluate",
        "average every fold's metrics, write metrics.json['mean'] and report.html",
        "eedi.evaluation.stage:run",
        "train",
        ("folds",),
        upstream=("index", "train-reranker", "quantize"),
        requires=("index",),
        outputs=_evaluate_outputs,
    ),
    Stage(
        "infer",
        "rerank the test pairs' candidates and write submission.csv",
        "eedi.submit.stage:run",
        "infer",
        ("infer", "reranker", "index"),
        upstream=("index", "train-reranker", "quantize"),
        requires=("index", "train-reranker"),
        outputs=_infer_outputs,
    ),
]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; stages: {[s.name for s in STAGES]}")


def stage_fingerprint(cfg: Config, stage: Stage, manifest: Manifest) -> str:
    resolved = config_to_dict(cfg)
    sections = {s: resolved.get(s) for s in stage.sections}
    upstream = {u: manifest.stage(u).get("fingerprint") for u in stage.upstream}
    inputs = input_hashes(Path(cfg.data.dir)) if stage.name == "prepare" else {}
    return fingerprint(stage.name, sections, upstream, inputs, resolved["seed"])
