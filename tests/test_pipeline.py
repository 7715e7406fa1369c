"""`eedi run`: stages in order in their own processes, skip when current, resume after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from eedi.pipeline.registry import STAGES

REPO = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["prepare", "synthesize", "train-retriever", "index", "train-reranker", "quantize", "evaluate", "infer"]


def test_stage_order_matches_the_design():
    names = [s.name for s in STAGES]
    assert names == [n for n in STAGE_ORDER if n in names]
    assert {"prepare", "train-retriever", "index", "train-reranker"} <= set(names)


@pytest.fixture
def small_kaggle(tmp_path, sample_dir) -> Path:
    """The first 150 questions of the bundled sample: the same schema, a fraction of the work."""
    out = tmp_path / "small"
    out.mkdir()
    pd.read_csv(sample_dir / "train.csv").head(150).to_csv(out / "train.csv", index=False)
    for name in ("misconception_mapping.csv", "test.csv", "sample_submission.csv"):
        (out / name).write_bytes((sample_dir / name).read_bytes())
    return out


def _eedi_run(run_dir: Path, data_dir: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "eedi",
        "run",
        "--config",
        str(REPO / "configs" / "cpu.yaml"),
        "--stages",
        "prepare,train-retriever,index",
        f"run_dir={run_dir}",
        f"data.dir={data_dir}",
        "retriever.epochs=2",
        "retriever.save_steps=5",
        "retriever.hard_negative_refresh_steps=5",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=REPO, start_new_session=True, **popen)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["fold_0"]["retriever"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tmp_path, small_kaggle):
    straight = tmp_path / "straight"
    assert _eedi_run(straight, small_kaggle).wait(timeout=900) == 0

    resumed = tmp_path / "resumed"
    proc = _eedi_run(resumed, small_kaggle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fold_dir = resumed / "retriever" / "fold_0"
    deadline = time.time() + 600
    while not list(fold_dir.glob("**/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "run finished before a checkpoint appeared: lower retriever.save_steps"
        assert time.time() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage's own process too, mid-training
    proc.wait()
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["stages"]["prepare"]["status"] == "done"
    assert manifest["stages"]["train-retriever"]["status"] == "running"  # killed: never marked done
    assert not (fold_dir / "model").exists()

    assert _eedi_run(resumed, small_kaggle).wait(timeout=900) == 0
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("prepare", "train-retriever", "index"))
    a, b = _metrics(straight), _metrics(resumed)
    assert b["map@25"] == pytest.approx(a["map@25"], abs=1e-6)
    assert b["recall@25"] == pytest.approx(a["recall@25"], abs=1e-6)


def test_rerun_skips_current_stages_and_reruns_changed_ones(tmp_path, small_kaggle):
    run_dir = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "eedi",
        "run",
        "--config",
        str(REPO / "configs" / "cpu.yaml"),
        "--stages",
        "prepare",
        f"run_dir={run_dir}",
        f"data.dir={small_kaggle}",
    ]
    subprocess.run(base, check=True, cwd=REPO)
    first = json.loads((run_dir / "manifest.json").read_text())["stages"]["prepare"]
    result = subprocess.run(base, check=True, cwd=REPO, capture_output=True, text=True)
    assert re.search(r"^\[1/1\] prepare +skipped +\(unchanged\)", result.stdout, re.M)
    assert "up to date" in (run_dir / "logs" / "prepare.log").read_text()  # the stage's own log says why
    again = json.loads((run_dir / "manifest.json").read_text())["stages"]["prepare"]
    assert again["started"] == first["started"]
    subprocess.run(base + ["folds.seed=7"], check=True, cwd=REPO)
    changed = json.loads((run_dir / "manifest.json").read_text())["stages"]["prepare"]
    assert changed["fingerprint"] != first["fingerprint"]
