"""Stage 4 (index): FAISS round trips, the candidates contract, metrics, and that the retriever learned."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import shared_config

from eedi.data.schema import CANDIDATE_COLUMNS
from eedi.errors import ConfigError
from eedi.retrieval.search import FaissIndex, gpu_available, top_k_from_scores


def unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --------------------------------------------------------------------------- FAISS


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_index_save_load_round_trip_gives_identical_top_k(tmp_path, kind):
    corpus, queries = unit_vectors(400), unit_vectors(20, seed=1)
    ids = np.arange(1000, 1400)
    index = FaissIndex.build(corpus, ids, kind=kind, nlist=8, nprobe=2, use_gpu=False)
    scores, found = index.search(queries, 25)
    index.save(tmp_path / "fold_0.faiss")
    loaded = FaissIndex.load(tmp_path / "fold_0.faiss", use_gpu=False)
    scores2, found2 = loaded.search(queries, 25)
    np.testing.assert_array_equal(found, found2)
    np.testing.assert_array_equal(scores, scores2)
    assert set(found.ravel()) <= set(ids)


def test_exact_index_is_exact_and_ivf_probing_every_list_agrees():
    corpus, queries = unit_vectors(400), unit_vectors(20, seed=1)
    ids = np.arange(400) * 3
    dense = queries @ corpus.T
    expected = ids[np.argsort(-dense, axis=1, kind="stable")[:, :10]]
    _, exact = FaissIndex.build(corpus, ids, kind="exact", use_gpu=False).search(queries, 10)
    np.testing.assert_array_equal(exact, expected)
    # 400 // 39 = 10 lists at most; probing all of them makes IVF exhaustive
    _, ivf = FaissIndex.build(corpus, ids, kind="ivf", nlist=64, nprobe=64, use_gpu=False).search(queries, 10)
    np.testing.assert_array_equal(ivf, expected)
    scores, top = top_k_from_scores(dense, ids, 10)
    np.testing.assert_array_equal(top, expected)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_k_larger_than_the_corpus_returns_the_whole_corpus():
    _, found = FaissIndex.build(unit_vectors(5), np.arange(5), use_gpu=False).search(unit_vectors(2, seed=3), 100)
    assert found.shape == (2, 5) and all(sorted(row) == list(range(5)) for row in found)


def test_missing_index_and_impossible_gpu_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `eedi index`"):
        FaissIndex.load(tmp_path / "fold_0.faiss")
    if not gpu_available():
        with pytest.raises(ConfigError, match="faiss-gpu"):
            FaissIndex.build(unit_vectors(10), np.arange(10), use_gpu=True)


# --------------------------------------------------------------------------- the stage's outputs


@pytest.fixture(scope="module")
def fold0(indexed_sample):
    from eedi.data.artifacts import load_folds, load_pairs
    from eedi.data.folds import train_val_split

    train, val = train_val_split(load_pairs(indexed_sample), load_folds(indexed_sample), 0)
    candidates = pd.read_parquet(indexed_sample / "candidates" / "fold_0.parquet")
    return train, val, candidates


def test_candidates_schema(indexed_sample, fold0):
    train, val, candidates = fold0
    top_k = shared_config(indexed_sample).index.top_k
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert str(candidates["rank"].dtype) == "int64" and str(candidates["MisconceptionId"].dtype) == "int64"
    assert str(candidates["fold"].dtype) == "int64" and (candidates["fold"] == 0).all()
    parts = candidates.groupby("part")["QuestionId_Answer"].unique()
    assert set(parts["val"]) == set(val["QuestionId_Answer"]) and set(parts["train"]) == set(train["QuestionId_Answer"])
    misconceptions = pd.read_parquet(indexed_sample / "misconceptions.parquet")
    assert candidates["MisconceptionId"].isin(misconceptions["MisconceptionId"]).all()
    for _, group in candidates.groupby("QuestionId_Answer"):
        assert group["rank"].tolist() == list(range(top_k))
        assert group["MisconceptionId"].is_unique
        assert (np.diff(group["score"].to_numpy()) <= 1e-6).all()


def test_saved_index_and_model_reproduce_the_candidates(indexed_sample, fold0):
    from eedi.retrieval.model import encode_queries, load_encoder
    from eedi.runtime import resolve

    _, val, candidates = fold0
    cfg = shared_config(indexed_sample)
    model = load_encoder(indexed_sample / "retriever" / "fold_0" / "model", resolve(cfg.runtime))
    index = FaissIndex.load(indexed_sample / "index" / "fold_0.faiss", use_gpu=False)
    queries = val.head(20)
    _, found = index.search(encode_queries(model, queries["QueryText"].tolist()), cfg.index.top_k)
    stored = candidates[candidates["part"] == "val"].sort_values(["QuestionId_Answer", "rank"])
    for key, row in zip(queries["QuestionId_Answer"], found):
        assert stored.loc[stored["QuestionId_Answer"] == key, "MisconceptionId"].tolist()[:10] == row[:10].tolist()


def test_metrics_json_holds_the_val_part_metrics(indexed_sample, fold0):
    from eedi.evaluation.metrics import candidates_to_lists, map_at_k

    train, val, candidates = fold0
    block = json.loads((indexed_sample / "metrics.json").read_text())["fold_0"]["retriever"]
    assert {"map@25", "recall@25", "n", "n_seen", "n_unseen"} <= set(block)
    assert block["n"] == len(val)
    lists = candidates_to_lists(candidates[candidates["part"] == "val"])
    actual = val["MisconceptionId"].astype(int).tolist()
    assert block["map@25"] == pytest.approx(map_at_k(actual, [lists[k] for k in val["QuestionId_Answer"]]))
    seen = set(train["MisconceptionId"].astype(int))
    assert block["n_seen"] == sum(a in seen for a in actual)


def test_test_pairs_get_candidates(indexed_sample):
    from eedi.data.artifacts import load_pairs

    pairs = load_pairs(indexed_sample)
    test = pairs[pairs["split"] == "test"]
    assert len(test), "data/sample has test pairs"
    candidates = pd.read_parquet(indexed_sample / "candidates" / "test.parquet")
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert set(candidates["QuestionId_Answer"]) == set(test["QuestionId_Answer"])
    assert (candidates["part"] == "test").all() and (candidates["fold"] == -1).all()
    assert candidates.groupby("QuestionId_Answer").size().eq(shared_config(indexed_sample).index.top_k).all()


def test_fine_tuned_minilm_beats_zero_shot(indexed_sample, fold0):
    """configs/cpu.yaml's retriever (MiniLM) against the same backbone untrained, on fold 0's validation pairs."""
    from eedi.data.artifacts import load_misconceptions
    from eedi.retrieval.model import build_model
    from eedi.retrieval.train import retrieval_map
    from eedi.runtime import resolve

    _, val, _ = fold0
    cfg = shared_config(indexed_sample)
    assert "minilm" in cfg.retriever.backbone.lower()
    misconceptions = load_misconceptions(indexed_sample)
    zero_shot = retrieval_map(
        build_model(cfg.retriever, resolve(cfg.runtime), trainable=False),
        val["QueryText"].tolist(),
        val["MisconceptionId"].astype(int).tolist(),
        misconceptions["MisconceptionId"].to_numpy(),
        misconceptions["MisconceptionName"].tolist(),
    )["map@25"]
    tuned = json.loads((indexed_sample / "metrics.json").read_text())["fold_0"]["retriever"]["map@25"]
    assert tuned > zero_shot + 0.04, (zero_shot, tuned)
    # the merged model the index used scores what the training log measured on the in-memory model
    log = [
        json.loads(line)
        for line in (indexed_sample / "retriever" / "fold_0" / "train_log.jsonl").read_text().splitlines()
    ]
    assert log[0]["val_map@25"] == pytest.approx(zero_shot, abs=1e-3)
    assert log[-1]["val_map@25"] == pytest.approx(tuned, abs=2e-3)


# --------------------------------------------------------------------------- label memory and unseen prior


@pytest.fixture(scope="module")
def small_retrieval(minilm_path, sample_dir):
    """A real MiniLM, 60 misconceptions of the sample, 40 labelled training queries and 12 new ones."""
    from sentence_transformers import SentenceTransformer

    from eedi.config import load_config
    from eedi.data.kaggle import load_kaggle_dir
    from eedi.data.pairs import build_pairs

    cfg = load_config(None, [f"data.dir={sample_dir}"])
    data = load_kaggle_dir(sample_dir)
    pairs = build_pairs(data, cfg.data)
    labelled = pairs[pairs["MisconceptionId"].notna()].reset_index(drop=True)
    train, new = labelled.iloc[:40].copy(), labelled.iloc[40:52].copy()
    used = set(train["MisconceptionId"].astype(int)) | set(new["MisconceptionId"].astype(int))
    extra = data.mapping[~data.mapping["MisconceptionId"].isin(used)].head(60 - len(used))
    misconceptions = pd.concat([data.mapping[data.mapping["MisconceptionId"].isin(used)], extra])
    model = SentenceTransformer(str(minilm_path), device="cpu")
    return model, misconceptions.reset_index(drop=True), train, new


def _config(**index):
    from eedi.config import load_config

    return load_config(None, [f"index.{k}={v}" for k, v in index.items()] + ["index.use_gpu=false"])


def test_candidate_retriever_equals_the_dense_formula(small_retrieval):
    """score = cos + prior + w * max(0, memory - cos), over the whole corpus, top-k in that order."""
    from eedi.retrieval.model import encode_corpus, encode_queries
    from eedi.retrieval.search import CandidateRetriever

    model, misconceptions, train, new = small_retrieval
    w, boost, k = 0.4, 0.06, 15
    cfg = _config(knn_weight=w, unseen_boost=boost, top_k=k, knn_neighbours=40)
    scores, ids = CandidateRetriever(model, misconceptions, cfg, train).search(new["QueryText"].tolist())

    corpus_ids = misconceptions["MisconceptionId"].to_numpy()
    q = encode_queries(model, new["QueryText"].tolist())
    cosine = q @ encode_corpus(model, misconceptions["MisconceptionName"].tolist()).T
    memory_sim = q @ encode_queries(model, train["QueryText"].tolist()).T
    labels = train["MisconceptionId"].astype(int).to_numpy()
    memory = np.stack(
        [
            [memory_sim[i, labels == m].max() if (labels == m).any() else -np.inf for m in corpus_ids]
            for i in range(len(q))
        ]
    )
    prior = np.where(np.isin(corpus_ids, labels), 0.0, boost)
    dense = cosine + prior + w * np.maximum(0.0, memory - cosine)
    want_scores, want_ids = top_k_from_scores(dense.astype(np.float32), corpus_ids, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_label_memory_recalls_a_repeated_question_but_not_its_own(small_retrieval):
    from eedi.retrieval.search import CandidateRetriever

    model, misconceptions, train, _ = small_retrieval
    cfg = _config(knn_weight=1.0, top_k=5)
    retriever = CandidateRetriever(model, misconceptions, cfg, train)
    queries = train["QueryText"].tolist()[:10]
    _, ids = retriever.search(queries)
    # memory = 1.0 for the query's own training row: its label is first whatever the cosine says
    assert ids[:, 0].tolist() == train["MisconceptionId"].astype(int).tolist()[:10]
    _, own_excluded = retriever.search(queries, train["QuestionId"].tolist()[:10])
    plain = CandidateRetriever(model, misconceptions, _config(top_k=5), train).search(queries)[1]
    assert not np.array_equal(own_excluded, ids)
    assert own_excluded.shape == plain.shape


def test_unseen_prior_lifts_every_unseen_misconception_and_zero_is_plain_cosine(small_retrieval):
    from eedi.retrieval.search import CandidateRetriever

    model, misconceptions, train, new = small_retrieval
    seen = set(train["MisconceptionId"].astype(int))
    n_unseen = int((~misconceptions["MisconceptionId"].isin(seen)).sum())
    lifted = CandidateRetriever(model, misconceptions, _config(unseen_boost=1.0, top_k=n_unseen), train)
    _, ids = lifted.search(new["QueryText"].tolist())
    assert not (set(ids.ravel().tolist()) & seen)
    plain_scores, plain_ids = CandidateRetriever(model, misconceptions, _config(top_k=10), train).search(
        new["QueryText"].tolist()
    )
    zero_shot = CandidateRetriever(model, misconceptions, _config(unseen_boost=0.5, knn_weight=0.5, top_k=10), None)
    np.testing.assert_array_equal(zero_shot.search(new["QueryText"].tolist())[1], plain_ids)


# --------------------------------------------------------------------------- calibration to a test mix


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_calibrated_boost_puts_that_share_of_unseen_misconceptions_first(share):
    from eedi.retrieval.search import calibrate_unseen_boost

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 30)).astype(np.float32)
    unseen = (np.arange(30) % 3 == 0).astype(np.float32)
    boost = calibrate_unseen_boost(scores, unseen, share)
    top1_unseen = unseen[np.argmax(scores + boost * unseen, axis=1)]
    assert top1_unseen.mean() == pytest.approx(round(share * 40) / 40)


def test_calibration_without_unseen_or_seen_misconceptions_is_no_boost_and_bad_share_is_an_error():
    from eedi.retrieval.search import calibrate_unseen_boost

    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert calibrate_unseen_boost(scores, np.zeros(4), 0.75) == 0.0
    assert calibrate_unseen_boost(scores, np.ones(4), 0.75) == 0.0
    # hand-computed: gaps (best seen - best unseen) are 3 in every row: any share in (0, 1) needs b = 3
    assert calibrate_unseen_boost(scores, np.array([1, 0, 0, 0]), 1.0) == pytest.approx(3.0 + 1e-4)
    with pytest.raises(ValueError, match="top1_share"):
        calibrate_unseen_boost(scores, np.array([1, 0, 0, 0]), 1.2)


def test_calibrated_search_hits_the_share_and_equals_the_fixed_boost_it_found(small_retrieval):
    """At predict time the retriever finds the boost without labels; ranking with that boost fixed (the FAISS
    path with label memory) gives the same lists: the dense calibrated path is exact."""
    from eedi.retrieval.search import CandidateRetriever

    model, misconceptions, train, new = small_retrieval
    cfg = _config(knn_weight=0.4, top_k=10, knn_neighbours=40)
    retriever = CandidateRetriever(model, misconceptions, cfg, train)
    seen = set(train["MisconceptionId"].astype(int))
    queries = new["QueryText"].tolist()
    for share in (0.25, 0.75):
        scores, ids = retriever.search(queries, unseen_top1_share=share)
        unseen_first = np.mean([int(m) not in seen for m in ids[:, 0]])
        assert unseen_first == pytest.approx(round(share * len(queries)) / len(queries))
        fixed = CandidateRetriever(model, misconceptions, _config(knn_weight=0.4, top_k=10, knn_neighbours=40), train)
        fixed.set_unseen_boost(retriever.calibrated_boost)
        fixed_scores, fixed_ids = fixed.search(queries)
        np.testing.assert_array_equal(ids, fixed_ids)
        np.testing.assert_allclose(scores, fixed_scores, atol=1e-5)


def test_test_candidates_of_fold_models_use_the_label_memory_and_calibration(indexed_sample, tmp_path):
    """Without a full-fit model the fold models' mean score ranks the test rows: each model with the label memory
    over every labelled pair and the prior calibrated on the test rows, as the full-fit path scores them. With one
    fold the mean is that model's own search."""
    from conftest import copy_tree

    from eedi.data.artifacts import load_misconceptions, load_pairs
    from eedi.retrieval.indexing import test_candidates
    from eedi.retrieval.model import load_encoder
    from eedi.retrieval.search import CandidateRetriever
    from eedi.runtime import resolve

    run = copy_tree(indexed_sample, tmp_path / "run")
    cfg = shared_config(run, "index.knn_weight=0.4", "index.unseen_top1_share=0.75")
    pairs, misconceptions = load_pairs(run), load_misconceptions(run)
    test = pairs[pairs["split"] == "test"]
    labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
    source, boost = test_candidates(cfg, test, misconceptions, labelled)
    assert source == "mean of folds 0"
    written = pd.read_parquet(run / "candidates" / "test.parquet").sort_values(["QuestionId_Answer", "rank"])

    def ranked(config) -> tuple[np.ndarray, np.ndarray, float | None]:
        model = load_encoder(run / "retriever" / "fold_0" / "model", resolve(config.runtime))
        retriever = CandidateRetriever(model, misconceptions, config, labelled)
        scores, ids = retriever.search(test["QueryText"].tolist(), unseen_top1_share=config.index.unseen_top1_share)
        order = np.argsort(test["QuestionId_Answer"].to_numpy(), kind="stable")
        return scores[order], ids[order], retriever.calibrated_boost

    scores, ids, calibrated = ranked(cfg)
    assert boost == pytest.approx(calibrated, abs=1e-5)
    top = cfg.index.top_k
    np.testing.assert_allclose(written["score"].to_numpy().reshape(-1, top), scores, atol=1e-5)
    assert (written["MisconceptionId"].to_numpy().reshape(-1, top)[:, :5] == ids[:, :5]).mean() > 0.99
    # the memory moves some of them: a mean of plain cosines would not be this ranking
    _, plain, _ = ranked(shared_config(run, "index.knn_weight=0.0", "index.unseen_top1_share=0.75"))
    assert (plain[:, :5] != ids[:, :5]).any()
