"""What ``eedi run`` prints: a header, one line as each stage starts and ends, the tail of a failing log.

A stage's headline figure comes from the summary it returned (recorded in the manifest).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from eedi.config import Config
from eedi.runtime import resolve


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "?"


def _scores(v: Mapping[str, Any], prefix: str = "") -> str:
    """``MAP@25 (mix) X MAP@25 Y``; the mix is left out where the rows hold no unseen pair (it is undefined)."""
    plain = f"MAP@25 {_f(v.get(prefix + 'map@25'))}"
    mix = v.get(prefix + "map@25_mix")
    return plain if mix is None else f"MAP@25 (mix) {_f(mix)} {plain}"


def cpu_flags() -> str:
    """``AVX-512`` / ``AVX2`` / the machine name: which vector units this CPU has (benchmarks differ by it)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return platform.machine()
    if "avx512f" in flags:
        return "AVX-512" + (" + BF16" if "avx512_bf16" in flags else "")
    return "AVX2" if "avx2" in flags else platform.machine()


def device_text(config: Config) -> str:
    placement = resolve(config.runtime)
    if placement.is_cuda:
        return f"cuda ({torch.cuda.get_device_name(0)}, {placement.dtype})".replace("torch.", "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({cores} cores, {cpu_flags()}, {placement.dtype})".replace("torch.", "")


def header(config_path: str | None, config: Config, n_stages: int) -> str:
    return (
        f"eedi run  config {config_path or '(defaults)'}  run dir {config.run_dir}  device {device_text(config)}"
        f"  {n_stages} stages"
    )


def _per_fold(summary: Mapping, key: str) -> str:
    parts = [
        f"{fold} {_f(block.get(key))}" for fold, block in summary.items() if isinstance(block, Mapping) and key in block
    ]
    return ", ".join(parts)


def _gain(v: Mapping[str, Any]) -> str:
    """The retriever's figures -> the reranker's, on one fold's validation rows (the mix only where it is defined)."""
    plain = f"MAP@25 {_f(v.get('retriever_map@25'))} -> {_f(v.get('reranker_map@25'))}"
    if v.get("retriever_map@25_mix") is None:
        return plain
    return f"MAP@25 (mix) {_f(v.get('retriever_map@25_mix'))} -> {_f(v.get('reranker_map@25_mix'))}  {plain}"


def stage_headline(name: str, summary: Mapping[str, Any]) -> str:
    """The one figure a user wants from a finished stage, from its manifest summary."""
    s = summary or {}
    if "skipped" in s:
        return f"skipped: {s['skipped']}"
    if name == "prepare":
        return (
            f"{s.get('train_labelled_pairs', '?')} labelled pairs, {s.get('test_pairs', 0)} test pairs, "
            f"{s.get('misconceptions', '?')} misconceptions"
        )
    if name == "synthesize":
        if s.get("status") in ("disabled",):
            return "disabled (synthetic.enabled=false)"
        return f"{s.get('rows', 0)} synthetic rows kept"
    if name == "train-retriever":
        figures = _per_fold(s, "final_map@25")
        return f"val MAP@25 {figures}" if figures else "trained"
    if name == "index":
        folds = [(k, v) for k, v in s.items() if k.startswith("fold_") and isinstance(v, Mapping)]
        text = "  ".join(f"{k} {_scores(v)} recall@25 {_f(v.get('recall@25'))}" for k, v in folds)
        return text + (f"  test: {s['test_candidates']}" if s.get("test_candidates") else "")
    if name == "train-reranker":
        folds = s.get("folds", {})
        return "  ".join(f"{k} {_gain(v)}" for k, v in folds.items()) or "trained"
    if name == "quantize":
        if s.get("enabled") is False:
            return "disabled (quantize.enabled=false)"
        models = [(k, v) for k, v in s.items() if isinstance(v, Mapping) and "map@25" in v]
        return "  ".join(f"{k} {_scores(v)}" for k, v in models)
    if name == "evaluate":
        mean = s.get("mean", {})
        return "mean " + "  ".join(f"{m} {_scores(v)}" for m, v in mean.items())
    if name == "infer":
        if not s.get("submission"):
            return s.get("reason", "no submission")
        return f"{s.get('rows', '?')} rows ({s.get('reranker') or 'retriever ranking'})"
    return ""


def stage_line(index: int, total: int, name: str, status: str, detail: str = "") -> str:
    return f"[{index}/{total}] {name:<15} {status:<8} {detail}".rstrip()


def finished_detail(entry: Mapping[str, Any], name: str) -> str:
    rss = entry.get("peak_rss_mb")
    figures = stage_headline(name, entry.get("summary", {}))
    return f"{_f(entry.get('seconds'), 0):>5} s  {_f((rss or 0) / 1024, 1)} GB  {figures}"


def gpu_detail(entry: Mapping[str, Any], planned: float | None) -> str:
    """``eedi run`` on CUDA: the stage's measured GPU peak beside ``eedi plan``'s (bytes); "" on CPU."""
    measured = entry.get("peak_gpu_mb")
    if measured is None and planned is None:
        return ""
    shown = "?" if measured is None else f"{measured * 2**20 / 1e9:.1f}"
    plan = "" if planned is None else f" (plan {planned / 1e9:.1f})"
    return f"  GPU peak {shown} GB{plan}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a stage log, progress-bar redraws (carriage returns) and colour codes removed."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    clean = [_ANSI.sub("", line.split("\r")[-1]) for line in text.splitlines()]
    return "\n".join([line for line in clean if line.strip()][-lines:])
