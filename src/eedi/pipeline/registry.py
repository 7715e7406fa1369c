"""The stage registry: every stage in order, with what it reads, what it writes and where it runs.

Each stage is a function ``run(config) -> summary`` in one library module, plus the upstream
stages it depends on and the output paths it promises (for the manifest and for skipping). The
config keys it reads are declared beside each key in :mod:`eedi.config` (``affects``): with the
upstream fingerprints they make the stage's fingerprint. ``scripts/NN_*.py`` and
``eedi <stage>`` both call :func:`eedi.pipeline.runner.run_stage`; ``eedi run`` calls every stage in order.

Stages live on one of two sides, because vLLM and llm-compressor pin different
versions of compressed-tensors and cannot share one environment (docs/architecture.md, "Two
environments"). :data:`SIDES` declares each side's environment, packages and the engines it can
run; :func:`check_sides` rejects a config whose engine key cannot run on its stage's side before
any stage starts. ``eedi run`` starts each stage with the interpreter of its side, taken
from ``EEDI_TRAIN_PYTHON`` / ``EEDI_INFER_PYTHON`` (default: the side's environment).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eedi.config import Config, config_to_dict, key_effects, stage_values
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
    upstream: tuple[str, ...] = ()
    """Stages whose outputs this one reads: their fingerprints are part of this one's."""
    outputs: Callable[[Config], list[Path]] = field(default=lambda cfg: [])
    requires: tuple[str, ...] | None = None
    """Upstream stages that must have run first (default: all of ``upstream``). Optional inputs,
    such as synthetic rows or quantized models, are upstream but not required."""
    distributed: bool = False
    """Trains on several processes (DDP through the Trainer): ``eedi run`` starts it under torchrun when
    ``runtime.nproc_per_node`` > 1, and only rank 0 records it in the manifest."""
    engines: tuple[str, ...] = ()
    """Config keys naming the engine this stage scores or generates with: its value must be one of the
    side's ``engines`` (:func:`check_sides`)."""

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
    names = _fold_names(cfg)
    return [lay.metrics, *[p for n in names for p in (lay.index(n), lay.candidates(n), lay.embeddings(n))]]


def _reranker_outputs(cfg: Config) -> list[Path]:
    if not cfg.reranker.enabled:
        return []
    lay = _layout(cfg)
    names = _fold_names(cfg)
    kind = cfg.reranker.kind
    return [
        lay.metrics,
        *[p for n in names for p in (lay.reranker_model(n, kind), lay.reranked(n))],
        *([lay.reranker_model(FULL, kind)] if cfg.folds.full_fit else []),
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
        outputs=_prepare_outputs,
    ),
    Stage(
        "synthesize",
        "generate questions for misconceptions with few or no training examples (vLLM)",
        "eedi.synthesis.stage:run",
        "infer",
        upstream=("prepare",),
        outputs=_synthesize_outputs,
    ),
    Stage(
        "train-retriever",
        "fine-tune the bi-encoder retriever per fold (hard + random + in-batch negatives)",
        "eedi.retrieval.stage:train",
        "train",
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
        upstream=("train-retriever",),
        outputs=_index_outputs,
    ),
    Stage(
        "train-reranker",
        "fine-tune the listwise LoRA reranker per fold, rerank its validation candidates",
        "eedi.rerank.stage:run",
        "train",
        upstream=("index", "synthesize"),
        requires=("index",),
        outputs=_reranker_outputs,
        distributed=True,
        engines=("reranker.backend",),
    ),
    Stage(
        "quantize",
        "merge the reranker, quantize it to 4-bit weights with GPTQ and AWQ, reload and measure",
        "eedi.quantize.stage:run",
        "train",
        upstream=("train-reranker",),
        outputs=_quantize_outputs,
        engines=("quantize.backend",),
    ),
    Stage(
        "evaluate",
        "average every fold's metrics, write metrics.json['mean'] and report.html",
        "eedi.evaluation.stage:run",
        "train",
        upstream=("index", "train-reranker", "quantize"),
        requires=("index",),
        outputs=_evaluate_outputs,
    ),
    Stage(
        "infer",
        "rerank the test pairs' candidates and write submission.csv",
        "eedi.submit.stage:run",
        "infer",
        upstream=("index", "train-reranker", "quantize"),
        requires=("index", "train-reranker"),
        outputs=_infer_outputs,
        engines=("infer.backend",),
    ),
]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; stages: {[s.name for s in STAGES]}")


def stage_fingerprint(cfg: Config, stage: Stage, upstream: dict[str, str | None]) -> str:
    """The stage's config keys (as declared in :mod:`eedi.config`), its upstream stages' fingerprints and, for
    ``prepare``, the raw input files: the stage is current while this is unchanged."""
    inputs = input_hashes(Path(cfg.data.dir)) if stage.name == "prepare" else {}
    return fingerprint(stage.name, stage_values(cfg, stage.name), {u: upstream.get(u) for u in stage.upstream}, inputs)


def recorded_upstream(stage: Stage, manifest: Manifest) -> dict[str, str | None]:
    """The fingerprints the manifest holds for ``stage``'s upstream stages."""
    return {u: manifest.stage(u).get("fingerprint") for u in stage.upstream}


# --------------------------------------------------------------------------- sides


@dataclass(frozen=True)
class Side:
    """One of the two environments (docs/architecture.md, "Two environments")."""

    name: str
    environment: str
    """The virtual environment ``make setup`` builds for it."""
    packages: tuple[str, ...]
    """Packages only this side has, which its stages import: the first one tells a running interpreter's side."""
    engines: tuple[str, ...]
    """Values an engine key (``Stage.engines``) may take in a stage of this side."""
    lacks: str
    """What the other engines need and this side does not install, for the error message."""


SIDES: dict[str, Side] = {
    "train": Side(
        "train",
        ".venv-train",
        ("llmcompressor", "trl", "peft"),
        ("transformers",),
        "no vLLM, which runs in the infer side's stages",
    ),
    "infer": Side("infer", ".venv-infer", ("vllm",), ("transformers", "vllm"), "every engine"),
}


def check_sides(cfg: Config, stages: list[str] | None = None) -> None:
    """Raise one ConfigError naming every engine key whose value cannot run on its stage's side
    (``stages``: the stages about to run; default all)."""
    resolved = config_to_dict(cfg)
    problems = []
    for stage in STAGES:
        if stages is not None and stage.name not in stages:
            continue
        side = SIDES[stage.side]
        for key in stage.engines:
            section, name = key.split(".")
            value = resolved[section][name]
            if value not in side.engines:
                problems.append(
                    f"{key}: {value} cannot run in stage {stage.name} ({side.name} side has {side.lacks}); "
                    f"use {' or '.join(side.engines)}"
                )
    if problems:
        raise ConfigError("; ".join(problems))


def _check_declarations() -> None:
    """Every stage a config key names exists: a typo would otherwise make the key affect nothing."""
    names = {s.name for s in STAGES}
    for key, effect in key_effects().items():
        unknown = sorted(set(effect.stages) - names)
        if unknown:
            raise ConfigError(f"config key {key} declares unknown stage(s) {unknown}; stages: {sorted(names)}")


_check_declarations()
