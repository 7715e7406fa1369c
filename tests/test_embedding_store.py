"""The index stage saves what it embedded; ``eedi serve`` loads it instead of embedding the corpus and the label
memory's training queries again, and only when the store was made by the model it serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eedi.config import load_config
from eedi.layout import RunLayout
from eedi.retrieval import search
from eedi.retrieval.search import EmbeddingStore, embedding_key

REPO = Path(__file__).resolve().parents[1]
QWEN_MODULES = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


@pytest.fixture
def indexed_tiny_run(tmp_path, sample_dir, tiny_qwen2_path) -> Path:
    """prepare, train-retriever (2 steps of the tiny random Qwen2) and index, with the label memory on, on the
    sample's first 120 questions."""
    from eedi.pipeline.runner import run_stage

    data = tmp_path / "data"
    data.mkdir()
    pd.read_csv(sample_dir / "train.csv").head(120).to_csv(data / "train.csv", index=False)
    (data / "misconception_mapping.csv").write_bytes((sample_dir / "misconception_mapping.csv").read_bytes())
    cfg = load_config(
        REPO / "configs" / "cpu.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.dir={data}",
            "synthetic.enabled=false",
            "synthetic.use=false",
            f"retriever.backbone={tiny_qwen2_path}",
            f"retriever.lora.target_modules={QWEN_MODULES}",
            "retriever.top_layers=null",
            "retriever.max_steps=2",
            "retriever.batch_size=8",
            "retriever.max_length=64",
            "retriever.n_hard_negatives=2",
            "retriever.n_random_negatives=4",
            "retriever.hard_negative_refresh_steps=2",
            "retriever.save_steps=2",
            "index.knn_weight=0.5",
            "index.unseen_boost=0.05",
        ],
    )
    for stage in ("prepare", "train-retriever", "index"):
        run_stage(cfg, stage)
    return Path(cfg.run_dir)


def _predictor(run_dir: Path, monkeypatch) -> tuple[object, list[int]]:
    """A retrieval-only Predictor, and the number of texts it embedded while loading."""
    from eedi.serve.predictor import Predictor

    embedded: list[int] = []
    for name in ("encode_corpus", "encode_queries"):
        real = getattr(search, name)
        monkeypatch.setattr(
            search,
            name,
            lambda model, texts, batch, real=real: (embedded.append(len(texts)), real(model, texts, batch))[1],
        )
    predictor = Predictor(run_dir, use_reranker=False)
    monkeypatch.undo()
    return predictor, embedded


def test_serve_loads_what_the_index_stage_embedded(indexed_tiny_run, monkeypatch):
    run_dir = indexed_tiny_run
    layout = RunLayout(run_dir)
    model = layout.retriever_model("fold_0")
    store = EmbeddingStore.load(layout.embeddings("fold_0"), embedding_key(model, 64))
    assert store is not None and len(store.vectors["documents"]) == len(pd.read_parquet(layout.misconceptions))

    loaded, embedded = _predictor(run_dir, monkeypatch)
    assert embedded == []  # neither the misconceptions nor the label memory's queries were embedded again
    assert loaded.retriever.memory is not None

    queries = pd.read_parquet(layout.pairs)["QueryText"].head(20).tolist()
    layout.embeddings("fold_0").unlink()
    encoded, embedded = _predictor(run_dir, monkeypatch)
    assert embedded and sum(embedded) > len(store.vectors["documents"])  # without the store: embedded again
    np.testing.assert_array_equal(loaded.retriever.documents, encoded.retriever.documents)
    (s1, i1), (s2, i2) = loaded.retriever.search(queries), encoded.retriever.search(queries)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert (i1[:, :10] == i2[:, :10]).mean() > 0.99  # same ranking, up to ties within float noise


def test_a_store_made_by_another_model_is_not_used(indexed_tiny_run, monkeypatch):
    layout = RunLayout(indexed_tiny_run)
    info = RunLayout.train_info(layout.retriever("fold_0"))
    entry = json.loads(info.read_text())
    info.write_text(json.dumps({**entry, "fingerprint": "another-model"}))
    _, embedded = _predictor(indexed_tiny_run, monkeypatch)
    assert embedded  # the stored embeddings belong to another model: embedded afresh


def test_the_kaggle_package_carries_the_embeddings(indexed_tiny_run, sample_dir, tmp_path, monkeypatch):
    """The package holds the retriever's stored embeddings; predicting from it embeds the test queries only."""
    from eedi.config import Config
    from eedi.manifest import Manifest
    from eedi.submit.kaggle import package
    from eedi.submit.predict import PACKAGE_EMBEDDINGS, predict

    resolved = Manifest(indexed_tiny_run).data["config"]
    config = Config.model_validate({**resolved, "reranker": {**resolved["reranker"], "enabled": False}})
    out = package(config, tmp_path / "package")
    info = json.loads((out / "package.json").read_text())
    assert (out / PACKAGE_EMBEDDINGS).is_file()
    assert info["embeddings_key"] == embedding_key(RunLayout(indexed_tiny_run).retriever_model("fold_0"), 64)

    data = tmp_path / "kaggle"
    data.mkdir()
    for name in ("train.csv", "misconception_mapping.csv"):
        (data / name).write_bytes((Path(config.data.dir) / name).read_bytes())
    test = pd.read_csv(sample_dir / "test.csv").head(5)
    test.to_csv(data / "test.csv", index=False)
    embedded: list[int] = []
    for name in ("encode_corpus", "encode_queries"):
        real = getattr(search, name)
        monkeypatch.setattr(
            search,
            name,
            lambda model, texts, batch, real=real: (embedded.append(len(texts)), real(model, texts, batch))[1],
        )
    submission = predict(data, out, tmp_path / "work")
    assert len(pd.read_csv(submission)) == 15  # 5 questions x 3 wrong answers
    assert embedded == [15]  # the test queries; the misconceptions and the label memory came from the package
