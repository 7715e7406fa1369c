"""The run manifest: ``run_dir/manifest.json``.

It records the resolved config, the git commit, the hashes of the input files, and for
every stage its status, fingerprint (and the config values it was made of), timings, peak memory,
output files and summary. A stage is skipped on re-run when its fingerprint (the config keys it reads,
the fingerprints of the stages it reads from, the hashes of the raw input files) is unchanged, it
finished, and its outputs still exist.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eedi.fileio import read_json, tree_sha256, write_json
from eedi.layout import RunLayout


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip() if out.returncode == 0 else None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit and dirty.returncode == 0 and dirty.stdout.strip():
            commit += "+dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_gpu_mb() -> float | None:
    """Peak CUDA memory PyTorch's allocator reserved in this process (the largest GPU's), None without CUDA.

    A vLLM engine runs in its own process: its memory is not in this figure."""
    torch = sys.modules.get("torch")  # never import torch for this: a stage that did not is a CPU stage
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    peaks = [torch.cuda.max_memory_reserved(d) for d in range(torch.cuda.device_count())]
    return round(max(peaks) / 2**20, 1) if peaks else None


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = RunLayout(run_dir).manifest
        self.data: dict = read_json(self.path, default=None) or {"stages": {}}

    def save(self) -> None:
        write_json(self.path, self.data)

    def record_run(self, config: dict, inputs: dict[str, str]) -> None:
        self.data.update(
            {
                "config": config,
                "git_commit": git_commit(),
                "inputs": inputs,
                "python": sys.version.split()[0],
                "platform": platform.platform(),
            }
        )
        self.data.setdefault("stages", {})
        self.save()

    def stage(self, name: str) -> dict:
        return self.data.setdefault("stages", {}).get(name, {})

    def is_current(self, name: str, stage_fingerprint: str) -> bool:
        entry = self.stage(name)
        if entry.get("status") != "done" or entry.get("fingerprint") != stage_fingerprint:
            return False
        return all((self.run_dir / rel).exists() for rel in entry.get("outputs", []))

    def start(self, name: str, stage_fingerprint: str, keys: dict | None = None) -> float:
        """``keys``: the config values the fingerprint was made of, so that a later run can say which changed."""
        self.data["stages"][name] = {
            "status": "running",
            "fingerprint": stage_fingerprint,
            "keys": keys or {},
            "started": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "python": sys.executable,
        }
        self.save()
        return time.perf_counter()

    def finish(self, name: str, t0: float, outputs: list[Path], summary: dict | None) -> None:
        entry = self.data["stages"][name]
        entry.update(
            {
                "status": "done",
                "seconds": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": peak_rss_mb(),
                "outputs": sorted(str(Path(p).relative_to(self.run_dir)) for p in outputs),
                "summary": summary or {},
            }
        )
        if (gpu := peak_gpu_mb()) is not None:
            entry["peak_gpu_mb"] = gpu
        self.save()

    def fail(self, name: str, t0: float, error: BaseException) -> None:
        entry = self.data["stages"].setdefault(name, {})
        entry.update(
            {
                "status": "failed",
                "seconds": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": peak_rss_mb(),
                "error": f"{type(error).__name__}: {error}",
            }
        )
        self.save()


def input_hashes(data_dir: Path) -> dict[str, str]:
    """sha256 of the raw Kaggle CSVs that exist in data_dir."""
    names = ["train.csv", "test.csv", "misconception_mapping.csv", "sample_submission.csv"]
    return {n: tree_sha256(data_dir / n) for n in names if (data_dir / n).exists()}
