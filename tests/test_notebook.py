"""The Kaggle notebook, executed for real: package a trained run, run every cell offline, check
the submission it writes. Inference side (vLLM, nbclient)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, shared_config

pytestmark = [pytest.mark.infer, pytest.mark.slow]


@pytest.fixture(scope="module")
def kaggle_package(tmp_path_factory, reranked_sample) -> Path:
    from eedi.submit.kaggle import package

    config = shared_config(reranked_sample, "infer.reranker_model=merged")
    return package(config, tmp_path_factory.mktemp("kaggle") / "eedi-package")


def test_package_layout(kaggle_package):
    info = json.loads((kaggle_package / "package.json").read_text())
    assert info["reranker_kind"] == "merged"
    assert [w for w in info["wheels"] if w.startswith("eedi-")]
    assert (kaggle_package / "retriever" / "modules.json").exists()
    assert (kaggle_package / "reranker" / "config.json").exists()
    assert set(info["sha256"]) == {"retriever", "reranker", "config.yaml"}


def _execute(notebook: Path, parameters: dict, cwd: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_notebook_writes_a_valid_submission(tmp_path, kaggle_package, sample_dir):
    work = tmp_path / "working"
    work.mkdir()
    nb = _execute(
        REPO / "notebooks" / "eedi_submission.ipynb",
        {"DATA_DIR": str(sample_dir), "PACKAGE_DIR": str(kaggle_package), "WORK_DIR": str(work), "OVERRIDES": []},
        cwd=work,
    )
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert str(work / "site-packages") in outputs  # eedi was imported from the installed wheel
    submission = pd.read_csv(work / "submission.csv")
    sample = pd.read_csv(sample_dir / "sample_submission.csv")
    assert list(submission.columns) == ["QuestionId_Answer", "MisconceptionId"]
    assert set(submission["QuestionId_Answer"]) == set(sample["QuestionId_Answer"])
    known = set(pd.read_csv(sample_dir / "misconception_mapping.csv")["MisconceptionId"])
    for ids in submission["MisconceptionId"]:
        values = [int(x) for x in ids.split()]
        assert len(values) == 25 and len(set(values)) == 25 and set(values) <= known
