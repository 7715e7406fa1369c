"""The CPU-Kaggle profile end to end, as the README types it: a holdout folder made by `eedi make-holdout`,
`eedi run --config configs/cpu-kaggle.yaml data.dir=...`, then `eedi score` of its submission.csv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_kaggle_profile_writes_a_submission_that_scores(tmp_path, sample_dir):
    holdout = tmp_path / "holdout"
    small = tmp_path / "small"
    small.mkdir()
    # 200 questions of the sample keep the run to a couple of minutes on 2 cores.
    pd.read_csv(sample_dir / "train.csv").head(200).to_csv(small / "train.csv", index=False)
    (small / "misconception_mapping.csv").write_bytes((sample_dir / "misconception_mapping.csv").read_bytes())
    eedi = [sys.executable, "-m", "eedi"]
    subprocess.run(
        [*eedi, "make-holdout", "--data", str(small), "--out", str(holdout)], check=True, cwd=REPO, capture_output=True
    )
    run_dir = tmp_path / "run"
    # The profile as shipped, with fewer steps: the test checks the path, benchmarks/real_data.py the quality.
    result = subprocess.run(
        [
            *eedi,
            "run",
            "--config",
            "configs/cpu-kaggle.yaml",
            f"data.dir={holdout}",
            f"run_dir={run_dir}",
            "retriever.max_steps=6",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert manifest["train-reranker"]["summary"] == {"skipped": "reranker.enabled=false"}
    assert (run_dir / "retriever" / "full" / "model").is_dir()
    assert not (run_dir / "reranker").exists()
    submission = pd.read_csv(run_dir / "submission.csv")
    test_pairs = 3 * len(pd.read_csv(holdout / "test.csv"))
    assert len(submission) == test_pairs
    assert submission["MisconceptionId"].str.split().map(len).eq(25).all()

    scored = subprocess.run(
        [*eedi, "score", str(run_dir / "submission.csv"), "--labels", str(holdout / "labels.csv"), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert scored.returncode == 0, scored.stderr
    score = json.loads(scored.stdout)
    assert 0.0 < score["map@25"] <= 1.0
    # A random ranking of the sample's ~300 misconceptions scores ~0.01; the retriever is far above that.
    assert score["map@25"] > 0.1
