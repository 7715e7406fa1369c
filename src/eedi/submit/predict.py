"""From candidates to submission.csv: choosing the reranker, reranking, and the Kaggle notebook's path.

:func:`predict` is the notebook's whole path from the raw competition CSVs and a packaged folder.
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from eedi.config import Config, load_config
from eedi.data.kaggle import load_kaggle_dir
from eedi.data.pairs import build_pairs
from eedi.data.submission import write_submission
from eedi.errors import ConfigError, DataError, MissingInputError
from eedi.evaluation.metrics import candidates_to_lists
from eedi.layout import FULL, RunLayout, model_name
from eedi.rerank.schemes import CPU_KINDS, rerank
from eedi.retrieval.model import load_encoder
from eedi.retrieval.search import CandidateRetriever, EmbeddingStore, candidates_frame
from eedi.runtime import Placement, resolve

log = logging.getLogger(__name__)

# Quantized weights need W4A16 kernels: vLLM has them on CUDA only (the CPU build here has no
# cpu_gemm_wna16); transformers decompresses them on load on any device.
QUANTIZED = ("gptq", "awq")
PACKAGE_EMBEDDINGS = "retriever-embeddings.npz"
"""In a Kaggle package: what the index stage embedded with the packaged retriever (key in package.json)."""


def reranker_candidates(run_dir: Path, folds: list[int]) -> dict[str, Path]:
    """Every reranker the run has produced, by name: gptq/awq (quantized), merged (full or first fold)."""
    layout = RunLayout(run_dir)
    found: dict[str, Path] = {}
    for method in QUANTIZED:
        path = layout.quantized_model(method)
        if (path / "config.json").exists():
            found[method] = path
    for name in [FULL, *[model_name(k) for k in folds]]:
        path = layout.reranker_merged(name)
        if (path / "config.json").exists():
            found["merged"] = path
            break
    return found


def choose_reranker(config: Config, run_dir: Path | None = None) -> tuple[str, Path]:
    """The reranker to serve, per ``infer.reranker_model`` (auto: quantized when the backend can run it).
    reranker.kind=features or pointwise: (the kind, the folder of the full-fit model, else the first fold's)."""
    run_dir = Path(run_dir or config.run_dir)
    kind = config.reranker.kind
    if kind in CPU_KINDS:
        layout = RunLayout(run_dir)
        for name in [FULL, *[model_name(k) for k in config.folds.use]]:
            if layout.reranker_model(name, kind).exists():
                return kind, layout.reranker(name)
        raise MissingInputError(f"a {kind} reranker in {layout.reranker_model(FULL, kind)}", "train-reranker")
    found = reranker_candidates(run_dir, list(config.folds.use))
    wanted = config.infer.reranker_model
    if wanted == "auto":
        quantized_ok = config.infer.backend == "transformers" or resolve(config.runtime).is_cuda
        order = [*QUANTIZED, "merged"] if quantized_ok else ["merged"]
        wanted = next((name for name in order if name in found), None)
        if wanted is None:
            raise MissingInputError(f"a reranker ({', '.join(order)}) in {run_dir}", "train-reranker")
    if wanted not in found:
        raise ConfigError(f"infer.reranker_model={wanted}: not found in {run_dir} (have {sorted(found)})")
    return wanted, found[wanted]


def rerank_to_submission(
    config: Config,
    reranker_path: Path,
    candidates: pd.DataFrame,
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    out: Path,
    sample: pd.DataFrame | None,
) -> Path:

    reranked = rerank(config, reranker_path, candidates, pairs, misconceptions, config.infer.backend)
    ranked = candidates_to_lists(reranked.assign(rank=reranked["final_rank"]))
    test = pairs[pairs["split"] == "test"]
    return write_submission(out, ranked, test, sample=sample, n_misconceptions=None)


# --------------------------------------------------------------------------- Kaggle path


def free_accelerator_memory(placement: Placement) -> None:
    """Collect unreferenced models and hand PyTorch's cached CUDA blocks back to the driver.

    vLLM sizes its engine from the memory the driver reports free (``infer.vllm_gpu_memory_utilization``
    of the total must be free), and its engine core runs in another process: blocks still cached by
    this process's allocator count as used and would make it refuse to start."""
    gc.collect()
    if placement.is_cuda and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def retrieve_test_candidates(
    config: Config,
    retriever_dir: Path,
    pairs: pd.DataFrame,
    test: pd.DataFrame,
    misconceptions: pd.DataFrame,
    store: EmbeddingStore | None = None,
) -> pd.DataFrame:
    """The retriever phase: load, search, and free the retriever before anything else loads.

    The model lives only in this frame, so returning drops the last reference; the explicit free makes
    its GPU memory available to the reranker engine started next (a 14B bi-encoder: 28 GB of bf16 weights)."""
    placement = resolve(config.runtime)
    # retriever.load_in_4bit: NF4 here too, so a 7B retriever takes ~5 GB of a 16 GB T4 instead of 15
    retriever = load_encoder(retriever_dir, placement, config.retriever.load_in_4bit)
    labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
    scores, ids = CandidateRetriever(retriever, misconceptions, config, labelled, store=store).search(
        test["QueryText"].tolist(), unseen_top1_share=config.index.unseen_top1_share
    )
    del retriever
    free_accelerator_memory(placement)
    return candidates_frame(test["QuestionId_Answer"].tolist(), scores, ids, -1, "test")


def predict(
    data_dir: str | Path, package_dir: str | Path, work_dir: str | Path, overrides: list[str] | None = None
) -> Path:
    """Raw competition CSVs + a packaged folder -> ``work_dir/submission.csv``.

    The package (see :mod:`eedi.submit.kaggle`) holds ``config.yaml`` (the training run's resolved
    config), ``retriever/`` (a SentenceTransformer folder) and ``reranker/`` (HF folder,
    quantized or merged). Retrieval is exact inner product over all misconceptions.
    """

    package_dir, work_dir = Path(package_dir), Path(work_dir)
    package = json.loads((package_dir / "package.json").read_text())
    config = load_config(
        package_dir / "config.yaml",
        [f"data.dir={data_dir}", f"run_dir={work_dir}", "index.use_gpu=auto", *(overrides or [])],
    )
    data = load_kaggle_dir(Path(data_dir))
    if data.test is None:
        raise DataError(Path(data_dir) / "test.csv", "not found: nothing to predict")
    pairs = build_pairs(data, config.data)
    test = pairs[pairs["split"] == "test"].reset_index(drop=True)
    misconceptions = data.mapping
    # The misconceptions and the training queries the index stage embedded with this retriever, if packaged.
    store = EmbeddingStore.load(package_dir / PACKAGE_EMBEDDINGS, package.get("embeddings_key") or "")
    candidates = retrieve_test_candidates(config, package_dir / "retriever", pairs, test, misconceptions, store)
    if not config.reranker.enabled:
        log.info(
            "retrieved top-%d for %d test pairs; reranker.enabled=false: submitting that ranking",
            config.index.top_k,
            len(test),
        )
        return write_submission(
            RunLayout(work_dir).submission, candidates_to_lists(candidates), test, sample=data.sample_submission
        )
    log.info(
        "retrieved top-%d for %d test pairs; reranking with %s",
        config.index.top_k,
        len(test),
        package.get("reranker_kind"),
    )
    return rerank_to_submission(
        config,
        package_dir / "reranker",
        candidates,
        pairs,
        misconceptions,
        RunLayout(work_dir).submission,
        data.sample_submission,
    )
