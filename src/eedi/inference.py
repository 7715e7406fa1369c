"""Stage 7 (infer): test pairs -> reranked candidates -> ``submission.csv``.

Two entry points share the same tail (rerank, then write a validated submission):

* :func:`run` - the pipeline stage. Reads ``candidates/test.parquet`` written by ``index``
  and the reranker chosen by ``infer.reranker_model`` from the run directory.
* :func:`predict` - the Kaggle notebook's path. Starts from the raw competition CSVs and a
  packaged folder (``eedi package-kaggle``: wheels, the retriever, the reranker, the run's
  config), so the notebook needs nothing but attached datasets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, load_config
from .data import build_pairs, load_kaggle_dir, load_misconceptions, load_pairs
from .metrics import candidates_to_lists
from .report import build_report
from .submission import write_submission

log = logging.getLogger(__name__)

# Quantized weights need W4A16 kernels: vLLM has them on CUDA only (the CPU build here has no
# cpu_gemm_wna16); transformers decompresses them on load on any device.
QUANTIZED = ("gptq", "awq")


def reranker_candidates(run_dir: Path, folds: list[int]) -> dict[str, Path]:
    """Every reranker the run has produced, by name: gptq/awq (quantized), merged (full or first fold)."""
    found: dict[str, Path] = {}
    for method in QUANTIZED:
        path = run_dir / "quantized" / f"reranker-{method}"
        if (path / "config.json").exists():
            found[method] = path
    for name in ["full", *[f"fold_{k}" for k in folds]]:
        path = run_dir / "reranker" / name / "merged"
        if (path / "config.json").exists():
            found["merged"] = path
            break
    return found


def choose_reranker(config: Config, run_dir: Path | None = None) -> tuple[str, Path]:
    """The reranker to serve, per ``infer.reranker_model`` (auto: quantized when the backend can run it)."""
    from .runtime import resolve

    run_dir = Path(run_dir or config.run_dir)
    found = reranker_candidates(run_dir, list(config.folds.use))
    wanted = config.infer.reranker_model
    if wanted == "auto":
        quantized_ok = config.infer.backend == "transformers" or resolve(config.runtime).is_cuda
        order = [*QUANTIZED, "merged"] if quantized_ok else ["merged"]
        wanted = next((name for name in order if name in found), None)
        if wanted is None:
            raise FileNotFoundError(f"no reranker in {run_dir} (looked for {order}): run train-reranker first")
    if wanted not in found:
        raise FileNotFoundError(f"infer.reranker_model={wanted}: not found in {run_dir} (have {sorted(found)})")
    return wanted, found[wanted]


def rerank_to_submission(config: Config, reranker_path: Path, candidates: pd.DataFrame, pairs: pd.DataFrame,
                         misconceptions: pd.DataFrame, out: Path, sample: pd.DataFrame | None) -> Path:
    from .reranker import rerank

    reranked = rerank(config, reranker_path, candidates, pairs, misconceptions, config.infer.backend)
    ranked = candidates_to_lists(reranked.assign(rank=reranked["final_rank"]))
    test = pairs[pairs["split"] == "test"]
    return write_submission(out, ranked, test, sample=sample, n_misconceptions=None)


def run(config: Config) -> dict:
    """Stage 7: rerank the test candidates and write submission.csv (skipped when there is no test.csv)."""
    run_dir = Path(config.run_dir)
    pairs = load_pairs(run_dir)
    if not (pairs["split"] == "test").any():
        log.info("no test pairs in %s: nothing to submit", config.data.dir)
        build_report(run_dir)
        return {"submission": None, "reason": "no test.csv in data.dir"}
    candidates = pd.read_parquet(run_dir / "candidates" / "test.parquet")
    sample_path = Path(config.data.dir) / "sample_submission.csv"
    sample = pd.read_csv(sample_path) if sample_path.exists() else None
    if not config.reranker.enabled:
        test = pairs[pairs["split"] == "test"]
        out = write_submission(run_dir / "submission.csv", candidates_to_lists(candidates), test, sample=sample)
        build_report(run_dir)
        log.info("submission (retriever ranking, reranker.enabled=false): %s", out)
        return {"submission": str(out), "reranker": None, "rows": int(len(pd.read_csv(out)))}
    name, path = choose_reranker(config)
    out = rerank_to_submission(config, path, candidates, pairs, load_misconceptions(run_dir),
                               run_dir / "submission.csv", sample)
    build_report(run_dir)
    log.info("submission (%s reranker, %s backend): %s", name, config.infer.backend, out)
    return {"submission": str(out), "reranker": name, "reranker_path": str(path), "rows": int(len(pd.read_csv(out)))}


# --------------------------------------------------------------------------- Kaggle path


def predict(data_dir: str | Path, package_dir: str | Path, work_dir: str | Path,
            overrides: list[str] | None = None) -> Path:
    """Raw competition CSVs + a packaged folder -> ``work_dir/submission.csv``.

    The package (see :mod:`eedi.kaggle`) holds ``config.yaml`` (the training run's resolved
    config), ``retriever/`` (a SentenceTransformer folder) and ``reranker/`` (HF folder,
    quantized or merged). Retrieval is exact inner product over all misconceptions.
    """
    from .index import CandidateRetriever, candidates_frame
    from .retriever import load_encoder
    from .runtime import resolve

    package_dir, work_dir = Path(package_dir), Path(work_dir)
    package = json.loads((package_dir / "package.json").read_text())
    config = load_config(package_dir / "config.yaml",
                         [f"data.dir={data_dir}", f"run_dir={work_dir}", "index.use_gpu=auto", *(overrides or [])])
    data = load_kaggle_dir(Path(data_dir))
    if data.test is None:
        raise FileNotFoundError(f"{data_dir}/test.csv not found: nothing to predict")
    pairs = build_pairs(data, config.data)
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    misconceptions = data.mapping
    placement = resolve(config.runtime)
    retriever = load_encoder(package_dir / "retriever", placement)
    labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
    scores, ids = CandidateRetriever(retriever, misconceptions, config, labelled).search(test["QueryText"].tolist())
    del retriever  # free its memory before the reranker loads
    candidates = candidates_frame(test["QuestionId_Answer"].tolist(), scores, ids, -1, "test")
    if not config.reranker.enabled:
        log.info("retrieved top-%d for %d test pairs; reranker.enabled=false: submitting that ranking",
                 config.index.top_k, len(test))
        return write_submission(work_dir / "submission.csv", candidates_to_lists(candidates), test,
                                sample=data.sample_submission)
    log.info("retrieved top-%d for %d test pairs; reranking with %s", config.index.top_k, len(test),
             package.get("reranker_kind"))
    return rerank_to_submission(config, package_dir / "reranker", candidates, pairs, misconceptions,
                                work_dir / "submission.csv", data.sample_submission)
