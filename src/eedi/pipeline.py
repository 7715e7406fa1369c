"""The stages in order, and the runner that executes, skips or resumes them.

Each stage is a function ``run(config) -> summary`` in one library module, plus the list
of config sections and upstream stages it depends on (for its fingerprint) and the
output paths it promises (for the manifest and for skipping). ``scripts/NN_*.py`` and
``eedi <stage>`` both call :func:`run_stage`; ``eedi run`` calls every stage in order.

Stages live on one of two sides, because vLLM and llm-compressor pin different
versions of compressed-tensors and cannot share one environment (README: "Two
environments"). ``eedi run`` starts each stage with the interpreter of its side, taken
from ``EEDI_TRAIN_PYTHON`` / ``EEDI_INFER_PYTHON`` (default: the current interpreter).
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .config import Config, config_to_dict
from .manifest import Manifest, fingerprint, input_hashes

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

    @property
    def required(self) -> tuple[str, ...]:
        return self.upstream if self.requires is None else self.requires

    def function(self) -> Callable[[Config], dict]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


def _run(cfg: Config, *names: str) -> list[Path]:
    return [Path(cfg.run_dir) / n for n in names]


# Ordered as the pipeline runs. A stage appears here only once it is really built.
STAGES: list[Stage] = [
    Stage("prepare", "validate the Kaggle CSVs, pivot to (question, wrong answer) pairs, assign folds",
          "eedi.data:prepare", "train", ("data", "folds"),
          outputs=lambda cfg: _run(cfg, "pairs.parquet", "misconceptions.parquet", "folds.csv",
                                   "prepare_summary.json")),
    Stage("synthesize", "generate questions for misconceptions with few or no training examples (vLLM)",
          "eedi.synthesis:run", "infer", ("synthetic", "data", "runtime"), upstream=("prepare",),
          outputs=lambda cfg: _run(cfg, "synthetic/train_synthetic.csv", "synthetic/rejected.csv",
                                   "synthetic/summary.json")),
    Stage("train-retriever", "fine-tune the bi-encoder retriever per fold (hard + random + in-batch negatives)",
          "eedi.retriever:run", "train", ("retriever", "folds", "data", "synthetic"),
          upstream=("prepare", "synthesize"), requires=("prepare",),
          outputs=lambda cfg: _run(cfg, *[f"retriever/fold_{k}/model" for k in cfg.folds.use],
                                   *(["retriever/full/model"] if cfg.folds.full_fit else []))),
    Stage("index", "embed the misconceptions into a FAISS index, write top-K candidates and retriever metrics",
          "eedi.index:run", "train", ("retriever", "index", "folds"), upstream=("train-retriever",),
          outputs=lambda cfg: _run(cfg, "metrics.json", *[p for k in cfg.folds.use for p in (
              f"index/fold_{k}.faiss", f"candidates/fold_{k}.parquet")])),
    Stage("train-reranker", "fine-tune the listwise LoRA reranker per fold, rerank its validation candidates",
          "eedi.reranker:run", "train", ("reranker", "folds", "data", "synthetic"),
          upstream=("index", "synthesize"), requires=("index",),
          outputs=lambda cfg: _run(cfg, "metrics.json", *[p for k in cfg.folds.use for p in (
              f"reranker/fold_{k}/merged", f"reranked/fold_{k}.parquet")],
              *(["reranker/full/merged"] if cfg.folds.full_fit else [])) if cfg.reranker.enabled else []),
    Stage("quantize", "merge the reranker, quantize it to 4-bit weights with GPTQ and AWQ, reload and measure",
          "eedi.quantize:run", "train", ("quantize", "reranker", "folds"), upstream=("train-reranker",),
          outputs=lambda cfg: _run(cfg, "quantized/summary.json", *(
              ["metrics.json", *[f"quantized/reranker-{m}" for m in cfg.quantize.methods]]
              if cfg.quantize.enabled else []))),
    Stage("evaluate", "average every fold's metrics, write metrics.json['mean'] and report.html",
          "eedi.evaluate:run", "train", ("folds",), upstream=("index", "train-reranker", "quantize"),
          requires=("index",),
          outputs=lambda cfg: _run(cfg, "metrics.json", "report.html")),
    Stage("infer", "rerank the test pairs' candidates and write submission.csv",
          "eedi.inference:run", "infer", ("infer", "reranker", "index"),
          upstream=("index", "train-reranker", "quantize"), requires=("index", "train-reranker"),
          outputs=lambda cfg: _run(cfg, "report.html")),
]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; built stages: {[s.name for s in STAGES]}")


def stage_fingerprint(cfg: Config, stage: Stage, manifest: Manifest) -> str:
    resolved = config_to_dict(cfg)
    sections = {s: resolved.get(s) for s in stage.sections}
    upstream = {u: manifest.stage(u).get("fingerprint") for u in stage.upstream}
    inputs = input_hashes(Path(cfg.data.dir)) if stage.name == "prepare" else {}
    return fingerprint(stage.name, sections, upstream, inputs, resolved["seed"])


def run_stage(cfg: Config, name: str, force: bool = False) -> dict:
    """Run one stage in this process, recording it in the manifest; skip it if current."""
    stage = get_stage(name)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    missing = [u for u in stage.required if manifest.stage(u).get("status") != "done"]
    if missing:
        raise RuntimeError(f"stage {name!r} needs {missing} to have run first in {run_dir} "
                           f"(run `eedi {missing[0]}` or `eedi run`)")
    manifest.record_run(config_to_dict(cfg), input_hashes(Path(cfg.data.dir)))
    fp = stage_fingerprint(cfg, stage, manifest)
    if not force and manifest.is_current(name, fp):
        log.info("stage %s is up to date (fingerprint %s): skipped", name, fp)
        return manifest.stage(name).get("summary", {})
    t0 = manifest.start(name, fp)
    try:
        summary = stage.function()(cfg) or {}
    except BaseException as err:
        manifest = Manifest(run_dir)  # the stage may have written to it (metrics)
        manifest.fail(name, t0, err)
        raise
    manifest = Manifest(run_dir)
    manifest.finish(name, t0, stage.outputs(cfg), summary)
    log.info("stage %s done in %.1fs", name, manifest.stage(name)["seconds"])
    return summary


def side_python(side: str) -> str:
    return os.environ.get(f"EEDI_{side.upper()}_PYTHON") or sys.executable


def run_all(config_path: str | None, overrides: list[str], cfg: Config, force: bool = False,
            stages: list[str] | None = None) -> None:
    """Run every built stage in order, each in a fresh process of its side's interpreter.

    A fresh process per stage gives honest per-stage peak memory, frees model memory
    between stages, and lets the two sides use their own environments.
    """
    selected = [s for s in STAGES if stages is None or s.name in stages]
    for stage in selected:
        cmd = [side_python(stage.side), "-m", "eedi", stage.name]
        if config_path:
            cmd += ["--config", str(config_path)]
        if force:
            cmd.append("--force")
        cmd += overrides
        log.info("==> %s (%s side)", stage.name, stage.side)
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise SystemExit(f"stage {stage.name} failed (exit {result.returncode}); "
                             f"fix the cause and re-run: finished stages are skipped")
    run_dir = Path(cfg.run_dir)
    if (run_dir / "report.html").exists():
        # evaluate rendered it before infer ran: render again so the timings table includes every stage
        from .report import build_report

        build_report(run_dir)
    for label, name in (("metrics", "metrics.json"), ("report", "report.html"), ("submission", "submission.csv")):
        if (run_dir / name).exists():
            print(f"{label:>10}: {(run_dir / name).resolve()}")
