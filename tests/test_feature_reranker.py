"""reranker.kind=features: the LightGBM ranker's features, move modes and weights against hand-computed values,
its config errors, and the stage on data/sample: trained across folds, used by infer, by serve and by the
Kaggle package's path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eedi.config import load_config
from eedi.errors import ConfigError
from eedi.rerank.features import LabelStats, candidate_features
from eedi.rerank.ltr import group_weights
from eedi.rerank.moves import move

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- move modes


MODEL = np.array([0.1, 0.9, 0.5, 0.7])  # the model's scores, candidates in retriever order
RETRIEVER = np.array([0.8, 0.6, 0.5, 0.1])
SEEN = np.array([True, False, True, True])


def test_move_all_orders_by_the_model():
    order, _ = move("all", MODEL, RETRIEVER, SEEN, top_k=2, blend_weight=0.5)
    assert order.tolist() == [1, 3, 2, 0]


def test_move_seen_keeps_unseen_candidates_in_place():
    order, _ = move("seen", MODEL, RETRIEVER, SEEN, top_k=2, blend_weight=0.5)
    # Place 1 (unseen) stays; the seen places 0, 2, 3 take the seen candidates by model score: 3, 2, 0.
    assert order.tolist() == [3, 1, 2, 0]


def test_move_top_k_reorders_only_the_first_k():
    order, _ = move("top_k", MODEL, RETRIEVER, SEEN, top_k=2, blend_weight=0.5)
    assert order.tolist() == [1, 0, 2, 3]


def test_move_blend_is_the_weighted_sum_of_min_max_scores():
    order, fused = move("blend", MODEL, RETRIEVER, SEEN, top_k=2, blend_weight=0.25)
    model = (MODEL - 0.1) / 0.8
    retriever = (RETRIEVER - 0.1) / 0.7
    np.testing.assert_allclose(fused, 0.25 * model + 0.75 * retriever)
    # fused: [0.75, 0.7768, 0.5536, 0.1875]
    assert order.tolist() == [1, 0, 2, 3]


def test_unknown_move_is_an_error():
    with pytest.raises(ValueError, match="move"):
        move("some", MODEL, RETRIEVER, SEEN, top_k=2, blend_weight=0.5)


def test_group_weights_give_unseen_pairs_their_share():
    table = pd.DataFrame({"group": ["a", "a", "b", "c", "d"], "unseen_pair": [True, True, False, False, False]})
    weights = group_weights(table, 0.75)
    # 1 unseen pair of 4: unseen rows 0.75 / 0.25 = 3, seen rows 0.25 / 0.75 = 1/3; per pair they sum to 3 : 1.
    np.testing.assert_allclose(weights, [3, 3, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(group_weights(table, None), np.ones(5))


# --------------------------------------------------------------------------- features


def test_candidate_features_by_hand():
    labelled = pd.DataFrame(
        {
            "MisconceptionId": [1, 1, 2],
            "ConstructId": [10, 11, 10],
            "SubjectId": [5, 5, 6],
            "QueryText": ["add the fractions", "add the tops", "multiply by ten"],
        }
    )
    misconceptions = pd.DataFrame(
        {"MisconceptionId": [1, 2, 3], "MisconceptionName": ["adds numerators", "times ten", "rounds down"]}
    )
    stats = LabelStats(labelled, misconceptions)
    pairs = pd.DataFrame(
        {"QuestionId_Answer": ["q_A"], "QueryText": ["add the fractions"], "ConstructId": [10], "SubjectId": [5]}
    )
    top = pd.DataFrame(
        {"QuestionId_Answer": ["q_A"] * 3, "rank": [0, 1, 2], "MisconceptionId": [3, 1, 2], "score": [0.9, 0.6, 0.3]}
    )
    f = candidate_features(top, pairs, stats)
    assert f["seen"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(f["log_n_label"], np.log1p([0, 2, 1]))
    assert f["n_construct"].tolist() == [0, 1, 1]  # construct 10 carries misconceptions 1 and 2 once each
    assert f["n_subject"].tolist() == [0, 2, 0]  # subject 5: misconception 1 twice
    np.testing.assert_allclose(f["construct_share"], [0, 0.5, 0.5])
    np.testing.assert_allclose(f["gap"], [0.0, 0.3, 0.6])
    assert f["rank_in_kind"].tolist() == [0, 0, 1]  # the only unseen one; then the seen ones in order
    assert f["n_seen_in_pair"].tolist() == [2, 2, 2]
    # The query is word for word a training query labelled 1: its TF-IDF label memory is 1 there.
    np.testing.assert_allclose(f["tfidf_memory"], [0.0, 1.0, 0.0], atol=1e-9)
    assert f["tfidf_memory_rank"].tolist() == [1, 0, 2]


# --------------------------------------------------------------------------- config


def test_unknown_reranker_kind_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="reranker.kind"):
        load_config(REPO / "configs" / "cpu.yaml", ["reranker.kind=pairwise"])


def test_feature_reranker_needs_two_folds():
    with pytest.raises(ConfigError, match=r"folds\.use"):
        load_config(
            REPO / "configs" / "cpu.yaml", ["reranker.kind=features", "quantize.enabled=false", "folds.use=[0]"]
        )


def test_feature_reranker_has_nothing_to_quantize():
    with pytest.raises(ConfigError, match="quantize.enabled"):
        load_config(REPO / "configs" / "cpu.yaml", ["reranker.kind=features", "folds.use=[0,1]"])


def test_bad_kind_on_the_command_line_exits_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "eedi", "run", "--dry-run", "--config", "configs/cpu.yaml", "reranker.kind=pairwise"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "reranker.kind" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the stage on the sample


FEATURE_OVERRIDES = [
    "reranker.kind=features",
    "quantize.enabled=false",
    "folds.use=[0,1]",
    "folds.full_fit=true",
    "synthetic.enabled=false",
    "synthetic.use=false",
    # The retrievers only have to write candidates; the ranker is what is tested.
    "retriever.max_steps=8",
    "infer.backend=transformers",
]


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, sample_dir) -> Path:
    from eedi.pipeline.runner import run_stage

    run_dir = tmp_path_factory.mktemp("features") / "run"
    cfg = load_config(
        REPO / "configs" / "cpu.yaml", [f"data.dir={sample_dir}", f"run_dir={run_dir}", *FEATURE_OVERRIDES]
    )
    for stage in ("prepare", "train-retriever", "index", "train-reranker"):
        run_stage(cfg, stage)
    from eedi.submit.stage import run as infer

    infer(cfg)
    return run_dir


@pytest.mark.slow
def test_stage_trains_a_ranker_per_fold_and_a_full_one(feature_run):
    for name in ("fold_0", "fold_1", "full"):
        assert (feature_run / "reranker" / name / "lightgbm.txt").is_file()
    summary = json.loads((feature_run / "manifest.json").read_text())["stages"]["train-reranker"]["summary"]
    assert summary["kind"] == "features"
    for name in ("fold_0", "fold_1"):
        fold = summary["folds"][name]
        curve = list(fold["train"]["train_map@25_by_iteration"].values())
        assert curve[-1] > curve[0], curve  # it learns its training pairs
        assert 0.0 < fold["reranker_map@25"] <= 1.0
    metrics = json.loads((feature_run / "metrics.json").read_text())
    assert metrics["fold_0"]["reranker"]["map@25"] == summary["folds"]["fold_0"]["reranker_map@25"]
    reranked = pd.read_parquet(feature_run / "reranked" / "fold_0.parquet")
    for _, group in reranked.groupby("QuestionId_Answer"):
        assert sorted(group["final_rank"]) == list(range(len(group)))


@pytest.mark.slow
def test_infer_writes_the_reranked_submission(feature_run):
    from conftest import assert_submission_reranked

    assert_submission_reranked(feature_run)


@pytest.mark.slow
def test_serve_uses_the_feature_reranker(feature_run, sample_dir):
    from conftest import assert_serve_matches_infer

    assert_serve_matches_infer(feature_run, sample_dir / "test.csv", "features", "lightgbm")
