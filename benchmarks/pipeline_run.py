#!/usr/bin/env python
"""Time the whole pipeline and record each stage's wall time and peak memory.

    python benchmarks/pipeline_run.py --config configs/cpu.yaml --run-dir runs/bench [key=value ...]

Deletes ``--run-dir`` and runs ``eedi run --force`` in it (every stage in its own process, so each
stage's peak RSS is its own), then reads the manifest and writes ``benchmarks/results/pipeline_<config>.json`` and a
markdown table. The targets (by default the embedded default's, a newcomer's first run, `make demo`: <= 10 min on 2
cores of an AVX2-only machine, peak RSS <= 8 GB; ``--target-minutes 30`` for the CPU-Kaggle profile) are checked
and printed, not asserted: this is a measurement. The record names the CPU's vector units, since AVX2-only
machines run the same work more slowly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from real_data import cpu_flags  # noqa: E402

TARGET_RSS_MB = 8 * 1024
# The libraries' own switches for the widest vector unit they dispatch to: on an AVX-512 machine they give
# the matrix kernels an AVX2-only machine runs, an estimate of the target machine's time (not a measurement on it).
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--run-dir", default="runs/bench")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/pipeline_<config>.json)")
    parser.add_argument(
        "--emulate-avx2",
        action="store_true",
        help="cap PyTorch, oneDNN and MKL at AVX2 kernels on an AVX-512 machine (vLLM's own kernels are not capped)",
    )
    parser.add_argument(
        "--target-minutes", type=float, default=10, help="the wall-time budget to compare with (10: make demo)"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    target_seconds = args.target_minutes * 60
    env = dict(os.environ)
    if args.emulate_avx2:
        env.update(AVX2_CAPS)

    # From an empty run directory: --force re-runs every stage, but stages still reuse the finished
    # per-fold outputs they find (a fold's model/, the synthesis checkpoint), which is not a timing.
    run_dir = REPO / args.run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [
        sys.executable,
        "-m",
        "eedi",
        "run",
        "--config",
        args.config,
        "--force",
        f"run_dir={args.run_dir}",
        *args.overrides,
    ]
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    children_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    manifest = json.loads((REPO / args.run_dir / "manifest.json").read_text())
    metrics_path = REPO / args.run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    stages = {
        name: {"seconds": s.get("seconds"), "peak_rss_mb": s.get("peak_rss_mb"), "status": s.get("status")}
        for name, s in manifest["stages"].items()
    }
    peak = max([s["peak_rss_mb"] or 0 for s in stages.values()] + [children_peak_mb])
    # Which code and config ran: a before/after pair is two commits of this repository.
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src", "configs"], cwd=REPO, capture_output=True, text=True)
    record = {
        "commit": commit.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else ""),
        "config": args.config,
        "overrides": args.overrides,
        "exit_code": result.returncode,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak, 1),
        "stages": stages,
        "targets": {
            "wall_seconds": target_seconds,
            "peak_rss_mb": TARGET_RSS_MB,
            "wall_ratio": round(wall / target_seconds, 3),
            "rss_ratio": round(peak / TARGET_RSS_MB, 3),
        },
        "mean_metrics": metrics.get("mean"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_flags(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "capped_at_avx2": {k: env[k] for k in AVX2_CAPS} if args.emulate_avx2 else None,
        },
    }
    out = Path(args.out or REPO / "benchmarks" / "results" / f"pipeline_{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

    print("\n| stage | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, s in stages.items():
        print(f"| {name} | {s['seconds']} | {s['peak_rss_mb']} |")
    print(
        f"| **total** | **{wall:.0f}** ({wall / target_seconds:.2f}x of the {args.target_minutes:g} min target) "
        f"| **{peak:.0f}** ({peak / TARGET_RSS_MB:.2f}x of 8 GB) |"
    )
    capped = " (kernels capped at AVX2: --emulate-avx2)" if args.emulate_avx2 else ""
    print(f"CPU: {cpu_flags()}{capped}\nwrote {out}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
