"""Shared fixtures: a tiny hand-made Kaggle directory, the bundled sample, the small models.

Heavy objects (models, a prepared run) are built once per session and reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

# These modules import the training side's packages (datasets, trl, llm-compressor) at module level. The
# inference environment has none of them and runs only `infer` tests, none of which live there.
collect_ignore = [] if importlib.util.find_spec("datasets") else ["test_quantize.py", "test_reranker.py"]
SAMPLE_DIR = REPO / "data" / "sample"
MODELS_DIR = Path(os.environ.get("EEDI_MODELS_DIR", REPO / "models"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_tiny_kaggle(directory: Path) -> Path:
    """Four questions, five misconceptions: small enough to reason about by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "MisconceptionId": [0, 1, 2, 3, 4],
            "MisconceptionName": [
                "Adds numerators and denominators",
                "Thinks angles in a triangle sum to 360",
                "Multiplies instead of dividing",
                "Ignores the negative sign",
                "Rounds down always",
            ],
        }
    ).to_csv(directory / "misconception_mapping.csv", index=False)
    rows = []
    for qid in range(4):
        rows.append(
            {
                "QuestionId": qid,
                "ConstructId": 10 + qid % 2,
                "ConstructName": f"Construct {qid % 2}",
                "SubjectId": 100,
                "SubjectName": "Fractions",
                "CorrectAnswer": "A",
                "QuestionText": f"\\( \\frac{{1}}{{{qid + 2}}}+\\frac{{1}}{{4}}= \\)",
                "AnswerAText": f"right {qid}",
                "AnswerBText": f"wrong b {qid}",
                "AnswerCText": f"wrong c {qid}",
                "AnswerDText": f"wrong d {qid}",
                "MisconceptionAId": None,
                "MisconceptionBId": float(qid % 5),
                "MisconceptionCId": float((qid + 1) % 5),
                "MisconceptionDId": None if qid == 0 else float((qid + 2) % 5),
            }
        )
    pd.DataFrame(rows).to_csv(directory / "train.csv", index=False)
    test = pd.DataFrame(rows).drop(columns=[f"Misconception{x}Id" for x in "ABCD"])
    test["QuestionId"] = test["QuestionId"] + 100
    test.to_csv(directory / "test.csv", index=False)
    keys = [f"{q}_{x}" for q in test["QuestionId"] for x in "BCD"]
    pd.DataFrame({"QuestionId_Answer": keys, "MisconceptionId": "1 2 3"}).to_csv(
        directory / "sample_submission.csv", index=False
    )
    return directory


@pytest.fixture
def tiny_kaggle(tmp_path: Path) -> Path:
    return write_tiny_kaggle(tmp_path / "kaggle")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "train.csv").exists():
        pytest.fail(f"bundled sample data missing in {SAMPLE_DIR}; run `eedi make-sample`")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The converted small models (make setup). Built here if missing, once per session."""
    from eedi.pretrained import setup_models

    setup_models(MODELS_DIR)
    return MODELS_DIR


@pytest.fixture(scope="session")
def minilm_path(models_dir: Path) -> Path:
    return models_dir / "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def smollm2_path(models_dir: Path) -> Path:
    return models_dir / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory, smollm2_path: Path) -> Path:
    """A randomly initialised 2-layer Qwen2 (hidden 64) with the SmolLM2 tokenizer."""
    from eedi.pretrained import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2", smollm2_path)


# One run directory shared by the fixtures below, and by the two pytest sessions of `make test`
# (training side first, then the inference side): stages that are already current are skipped
# by the manifest, so each model is trained once per CI run. The folder is keyed by a hash of
# the library, the CPU config and the sample data, so a stale cache is never reused after a change.
TEST_RUNS = Path(os.environ.get("EEDI_TEST_RUNS", REPO / "build" / "test-runs"))
# Generation is tested on its own (tests/test_synthesis.py, inference side): the shared run trains
# without synthetic rows so the training side never needs vLLM.
# The demo's config without synthesis, and with what the demo leaves out to keep within 10 minutes: AWQ beside
# GPTQ, vLLM's CPU engine for infer (so that the tests cover both), and the reranker trained on 128 windows, the
# reranker the quantization bars of tests/test_quantize.py were measured on.
SHARED_OVERRIDES = [
    "synthetic.enabled=false",
    "synthetic.use=false",
    "quantize.methods=[gptq,awq]",
    "infer.backend=vllm",
    "reranker.max_train_windows=128",
]


def _content_hash() -> str:
    import hashlib

    digest = hashlib.sha256()
    # eedi/serve only reads a finished run: editing it must not retrain the shared run.
    files = sorted(p for p in (REPO / "src" / "eedi").rglob("*.py") if "serve" not in p.relative_to(REPO / "src").parts)
    files += [REPO / "configs" / "cpu.yaml"]
    files += sorted((REPO / "data" / "sample").glob("*.csv"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_shared_stages(sample_dir: Path, *stages: str) -> Path:
    """Run (or find current) ``stages`` of configs/cpu.yaml on data/sample in the shared run dir."""
    from eedi.config import load_config
    from eedi.pipeline.runner import run_stage

    run_dir = TEST_RUNS / f"cpu-{_content_hash()}"
    cfg = load_config(
        REPO / "configs" / "cpu.yaml", [f"data.dir={sample_dir}", f"run_dir={run_dir}", *SHARED_OVERRIDES]
    )
    for stage in stages:
        run_stage(cfg, stage)
    return run_dir


def shared_config(run_dir: Path, *overrides: str):
    """The config the shared run was made with (plus ``overrides``): read-only use in tests."""
    from eedi.config import load_config

    return load_config(
        REPO / "configs" / "cpu.yaml", [f"data.dir={SAMPLE_DIR}", f"run_dir={run_dir}", *SHARED_OVERRIDES, *overrides]
    )


@pytest.fixture(scope="session")
def prepared_sample(sample_dir: Path) -> Path:
    """data/sample through prepare. Returns the shared run dir: read it, never write to it."""
    return run_shared_stages(sample_dir, "prepare")


@pytest.fixture(scope="session")
def indexed_sample(sample_dir: Path) -> Path:
    """... through train-retriever and index (fold 0): retriever models, candidates, retriever metrics."""
    return run_shared_stages(sample_dir, "prepare", "train-retriever", "index")


@pytest.fixture(scope="session")
def reranked_sample(sample_dir: Path) -> Path:
    """... through train-reranker (fold 0): reranker adapter + merged model, reranked candidates."""
    return run_shared_stages(sample_dir, "prepare", "train-retriever", "index", "train-reranker")


@pytest.fixture(scope="session")
def quantized_sample(sample_dir: Path) -> Path:
    """... through quantize (fold 0): GPTQ and AWQ checkpoints of the reranker, before/after metrics."""
    return run_shared_stages(sample_dir, "prepare", "train-retriever", "index", "train-reranker", "quantize")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def assert_submission_reranked(run_dir: Path) -> None:
    """infer wrote 25 misconceptions a row, and the second stage moved something: not the retriever's ranking."""
    import pandas as pd

    from eedi.evaluation.metrics import candidates_to_lists

    submission = pd.read_csv(run_dir / "submission.csv")
    assert submission["MisconceptionId"].str.split().map(len).eq(25).all()
    retriever = candidates_to_lists(pd.read_parquet(run_dir / "candidates" / "test.parquet"))
    ours = dict(zip(submission["QuestionId_Answer"], submission["MisconceptionId"]))
    moved = sum(ours[key] != " ".join(map(str, ids[:25])) for key, ids in retriever.items())
    assert moved > 0


def assert_serve_matches_infer(run_dir: Path, test_csv: Path, kind: str, backend: str) -> None:
    """``eedi serve`` loads the run's ``kind`` reranker on ``backend``, and its answer to the uploaded test.csv is
    what infer wrote (same rows, same models, same calibration)."""
    import io

    import pandas as pd

    from eedi.serve.predictor import Predictor

    predictor = Predictor(run_dir)
    try:
        assert predictor.reranker_name == kind
        assert predictor.has_reranker
        assert predictor.health()["reranker_backend"] == backend
        served = pd.read_csv(io.BytesIO(predictor.submission(test_csv.read_bytes())))
    finally:
        predictor.close()
    written = pd.read_csv(run_dir / "submission.csv")
    pd.testing.assert_frame_equal(
        served.sort_values("QuestionId_Answer").reset_index(drop=True),
        written.sort_values("QuestionId_Answer").reset_index(drop=True),
    )


# Fixtures that train or generate with real models on the sample (minutes each on 2 cores).
# Tests that use them count as slow: `make test-fast` skips them; `make test` (CI) runs everything.
HEAVY_FIXTURES = {"indexed_sample", "reranked_sample", "quantized_sample", "kaggle_package", "generated"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
