"""benchmarks/cuda_check.py on a machine without CUDA: it imports, explains itself, and skips every check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "cuda_check.py"
CHECKS = [
    "synthesize_vllm",
    "retriever_1gpu",
    "retriever_ngpu",
    "index_faiss_gpu",
    "reranker_qlora",
    "quantize",
    "vllm_gptq",
    "vllm_awq",
    "infer",
    "plan_vs_measured",
]


def test_help_names_every_check():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in CHECKS:
        assert name in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the checks would run")
def test_without_cuda_every_check_is_skipped_with_the_reason(tmp_path):
    out = tmp_path / "cuda_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert list(report["checks"]) == CHECKS
    for name, record in report["checks"].items():
        assert record["status"] == "skipped", name
        assert "CUDA is not available" in record["reason"]
    assert report["counts"] == {"ok": 0, "failed": 0, "timeout": 0, "skipped": len(CHECKS)}
    assert not (tmp_path / "work").exists()  # nothing was started


def test_timeouts_fit_eight_minutes():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import cuda_check
    finally:
        sys.path.pop(0)
    assert list(cuda_check.TIMEOUTS) == CHECKS == list(cuda_check.CHECKS)
    assert sum(limit for _, limit in cuda_check.TIMEOUTS.values()) <= 8 * 60


def test_the_checks_config_is_valid_and_planned(tmp_path, models_dir):
    """The overrides every check runs with validate against the schema, and the plan sizes the tiny model."""
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    (work / "results" / "measured.json").write_text(json.dumps({"retriever_1gpu": {"status": "ok", "peak_gb": 0.5}}))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--one", "plan_vs_measured", "--work", str(work), "--models", str(models_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((work / "results" / "plan_vs_measured.json").read_text())
    assert record["status"] == "ok", record
    row = record["rows"]["retriever_1gpu"]
    assert row["plan_row"] == "train-retriever" and row["measured_peak_gb"] == 0.5
    assert row["measured_over_plan"] == pytest.approx(0.5 / row["plan_peak_gb"], abs=0.002)
