"""Package a finished run into a folder ready to upload as a Kaggle dataset.

Kaggle code-competition notebooks run offline, so everything the notebook
(``notebooks/eedi_submission.ipynb``) needs travels in one attached dataset::

    <out>/
      package.json     what was packaged: source run, commit, models, wheels, sha256 of each file
      config.yaml      the run's resolved config (query template, top-K, reranker windows, fusion)
      retriever/       SentenceTransformer folder (full-fit model if trained, else the first fold's)
      retriever-embeddings.npz  what the index stage embedded with it (misconceptions, training queries)
      reranker/        HF folder: quantized (gptq/awq) or merged, per infer.reranker_model; for
                       reranker.kind features or pointwise, the reranker/<name> folder (lightgbm.txt or
                       cross_encoder/)
                       (absent when reranker.enabled is false: the submission is the retriever's ranking)
      wheels/          the eedi wheel; with --with-deps also every dependency of [infer-cuda,cpu,nf4]

``--with-deps`` runs ``pip download`` for the inference extras, which needs an index (PyPI)
and downloads vLLM's CUDA wheels (GBs): do it on the machine you upload from.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

from eedi.config import Config, config_to_dict
from eedi.fileio import atomic_dir, atomic_path, tree_sha256, write_json
from eedi.layout import RunLayout
from eedi.manifest import git_commit
from eedi.retrieval.model import trained_retriever
from eedi.retrieval.search import EmbeddingStore, embedding_key
from eedi.submit.predict import PACKAGE_EMBEDDINGS, choose_reranker

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
# The sample-data generator is a development tool: the notebook never needs it.
NOT_IN_WHEEL = ("eedi/sample/",)
# vLLM for CUDA plus faiss-cpu: exact search over 2,587 misconceptions needs no GPU, and one environment
# gets exactly one faiss build (pyproject.toml, tests/test_docker.py); bitsandbytes for an NF4 retriever.
KAGGLE_EXTRAS = "infer-cuda,cpu,nf4"


def strip_wheel(wheel: Path, prefixes: tuple[str, ...] = NOT_IN_WHEEL) -> None:
    """Drop the files under ``prefixes`` from a built wheel, keeping its RECORD consistent."""
    kept = []
    with zipfile.ZipFile(wheel) as source:
        for info in source.infolist():
            if not info.filename.startswith(prefixes):
                kept.append((info, source.read(info)))
    with atomic_path(wheel) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in kept:
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(prefixes)).encode()
            target.writestr(info, data)


def build_wheels(dest: Path, with_deps: bool) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(REPO)],
        check=True,
    )
    if with_deps:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), f"{REPO}[{KAGGLE_EXTRAS}]"], check=True
        )
    for wheel in dest.glob("eedi-*.whl"):
        strip_wheel(wheel)
    return sorted(p.name for p in dest.glob("*.whl"))


def package(config: Config, out: str | Path, with_deps: bool = False) -> Path:
    """Write the Kaggle dataset folder for the run in ``config.run_dir`` (atomically)."""
    out = Path(out)
    retriever = trained_retriever(config.run_dir, config.folds.use)
    # reranker.enabled=false (the CPU-Kaggle profile): the package holds the retriever alone.
    reranker_kind, reranker = choose_reranker(config) if config.reranker.enabled else (None, None)
    embeddings_key = embedding_key(retriever, config.retriever.encode_batch_size)
    embeddings = RunLayout(config.run_dir).embeddings(retriever.parent.name)
    if EmbeddingStore.load(embeddings, embeddings_key) is None:
        embeddings_key = None  # none made by this model: the notebook embeds the corpus itself
    with atomic_dir(out) as tmp:
        shutil.copytree(retriever, tmp / "retriever")
        if embeddings_key is not None:
            shutil.copy(embeddings, tmp / PACKAGE_EMBEDDINGS)
        if reranker is not None:
            shutil.copytree(reranker, tmp / "reranker")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
        wheels = build_wheels(tmp / "wheels", with_deps)
        write_json(
            tmp / "package.json",
            {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "git_commit": git_commit(),
                "run_dir": str(Path(config.run_dir).resolve()),
                "retriever_from": str(retriever),
                "embeddings_key": embeddings_key,
                "reranker_kind": reranker_kind,
                "reranker_from": str(reranker) if reranker is not None else None,
                "infer_backend": config.infer.backend,
                "wheels": wheels,
                "sha256": {
                    name: tree_sha256(tmp / name)
                    for name in ("retriever", "reranker", "config.yaml")
                    if (tmp / name).exists()
                },
            },
        )
    log.info("packaged %s (retriever %s, reranker %s) into %s", config.run_dir, retriever, reranker_kind, out)
    return out
