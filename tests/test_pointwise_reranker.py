"""reranker.kind=pointwise: the cross-encoder's training groups, its config errors, and the stage on data/sample:
trained from the fold's retriever, better than the retriever's own scores alone, used by infer and by serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eedi.config import load_config
from eedi.errors import ConfigError
from eedi.rerank.moves import rerank_top
from eedi.rerank.pointwise import training_groups

REPO = Path(__file__).resolve().parents[1]


def test_training_groups_take_hard_negatives_from_the_pool_and_never_the_positive():
    cfg = load_config(
        REPO / "configs" / "cpu.yaml",
        ["reranker.kind=pointwise", "quantize.enabled=false", "reranker.pointwise.hard_negative_pool=3"],
    )
    # Pair a: the positive (7) sits at rank 1 of a pool of 3; pair b's pool (3 ranks) holds only 2 others
    # once its positive is out, fewer than the 3 hard negatives asked for, so b is left out.
    candidates = pd.DataFrame(
        {
            "QuestionId_Answer": ["a"] * 5 + ["b"] * 3,
            "rank": [0, 1, 2, 3, 4, 0, 1, 2],
            "MisconceptionId": [5, 7, 6, 8, 9, 1, 2, 3],
        }
    )
    names = {m: f"m{m}" for m in range(10)}
    groups = training_groups(cfg, candidates, {"a": 7, "b": 2}, {"a": "qa", "b": "qb"}, names)
    assert groups.columns.tolist() == ["query", "positive", "negative_0", "negative_1", "negative_2"]
    assert len(groups) == 0  # a's pool of 3 minus its positive leaves 2 as well

    cfg = load_config(
        REPO / "configs" / "cpu.yaml",
        ["reranker.kind=pointwise", "quantize.enabled=false", "reranker.pointwise.hard_negative_pool=4"],
    )
    groups = training_groups(cfg, candidates, {"a": 7, "b": 2}, {"a": "qa", "b": "qb"}, names)
    assert groups["query"].tolist() == ["qa"]
    assert groups["positive"].tolist() == ["m7"]
    # The top 4 of a without 7: 5, 6, 8 — all three, in the order drawn.
    assert sorted(groups.iloc[0, 2:].tolist()) == ["m5", "m6", "m8"]


def test_rerank_top_moves_only_the_top_depth():
    cfg = load_config(REPO / "configs" / "cpu.yaml", ["reranker.kind=pointwise", "quantize.enabled=false"])
    section = cfg.reranker.pointwise.model_copy(update={"move": "all"})
    candidates = pd.DataFrame(
        {
            "QuestionId_Answer": ["a"] * 4,
            "rank": [0, 1, 2, 3],
            "MisconceptionId": [10, 11, 12, 13],
            "score": [0.9, 0.8, 0.7, 0.6],
        }
    )

    def reversed_scores(top):
        return np.arange(len(top), dtype=float), np.ones(len(top), dtype=bool)

    out = rerank_top(candidates, 3, section, reversed_scores)
    # The first three in reverse, the fourth (below depth) after them with no model score.
    assert out["MisconceptionId"].tolist() == [12, 11, 10, 13]
    assert out["final_rank"].tolist() == [0, 1, 2, 3]
    assert np.isnan(out["reranker_score"].iloc[-1])


def test_pointwise_needs_a_fold_to_train_on():
    with pytest.raises(ConfigError, match=r"folds\.use"):
        load_config(
            REPO / "configs" / "cpu.yaml",
            ["reranker.kind=pointwise", "quantize.enabled=false", "folds.use=[]", "folds.full_fit=true"],
        )


def test_pointwise_has_nothing_to_quantize():
    with pytest.raises(ConfigError, match="quantize.enabled"):
        load_config(REPO / "configs" / "cpu.yaml", ["reranker.kind=pointwise"])


def test_bad_pointwise_key_names_it():
    with pytest.raises(ConfigError, match="reranker.pointwise.hard_negatives"):
        load_config(
            REPO / "configs" / "cpu.yaml",
            ["reranker.kind=pointwise", "quantize.enabled=false", "reranker.pointwise.hard_negatives=0"],
        )


# --------------------------------------------------------------------------- the stage on the sample

POINTWISE_OVERRIDES = [
    "reranker.kind=pointwise",
    "quantize.enabled=false",
    "reranker.pointwise.max_train_pairs=192",  # 12 steps of 16 groups: about 2 minutes on 2 cores
    "reranker.pointwise.lr=5e-4",  # a few steps must move the new head
    "reranker.depth=10",  # scoring is most of the cost: 10 candidates a pair, not 25
    "infer.backend=transformers",
]


@pytest.fixture(scope="module")
def pointwise_run(tmp_path_factory, indexed_sample):
    """A copy of the shared run through index (fold 0), then train-reranker and infer with the cross-encoder."""
    from conftest import shared_config

    from eedi.pipeline.runner import run_stage

    run_dir = tmp_path_factory.mktemp("pointwise") / "run"
    shutil.copytree(indexed_sample, run_dir)
    cfg = shared_config(run_dir, *POINTWISE_OVERRIDES)
    run_stage(cfg, "train-reranker")
    run_stage(cfg, "infer")
    return run_dir


@pytest.mark.slow
def test_stage_trains_a_cross_encoder_that_learns(pointwise_run):
    assert (pointwise_run / "reranker" / "fold_0" / "cross_encoder" / "config.json").is_file()
    import json

    summary = json.loads((pointwise_run / "manifest.json").read_text())["stages"]["train-reranker"]["summary"]
    assert summary["kind"] == "pointwise"
    fold = summary["folds"]["fold_0"]
    train = fold["train"]
    assert train["train_groups"] == 192
    # It learns: the softmax loss ends below what scoring every candidate the same costs, log(1 + 3 + 2).
    assert train["constant_loss"] == pytest.approx(np.log(6), abs=1e-4)
    assert train["last_loss"] < train["constant_loss"] - 0.05
    metrics = json.loads((pointwise_run / "metrics.json").read_text())
    assert metrics["fold_0"]["reranker"]["map@25"] == fold["reranker_map@25"]
    reranked = pd.read_parquet(pointwise_run / "reranked" / "fold_0.parquet")
    for _, group in reranked.groupby("QuestionId_Answer"):
        assert sorted(group["final_rank"]) == list(range(len(group)))


@pytest.mark.slow
def test_fine_tuned_cross_encoder_beats_its_untrained_start(pointwise_run):
    """Alone (move=all), on fold 0's validation pairs, the trained model ranks better than the retriever it
    started from with its new, untrained head."""
    from conftest import shared_config
    from sentence_transformers.cross_encoder import CrossEncoder

    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.evaluation.metrics import fold_metrics
    from eedi.rerank.pointwise import PointwiseReranker

    cfg = shared_config(pointwise_run, *POINTWISE_OVERRIDES, "reranker.pointwise.move=all")
    pairs, folds = load_pairs(pointwise_run), load_folds(pointwise_run)
    labelled = train_val_split(pairs, folds, 0)[0]
    seen = set(labelled["MisconceptionId"].astype(int))

    def map25(reranked: pd.DataFrame) -> float:
        return fold_metrics(reranked, pairs, "final_rank", seen, cfg.evaluation.unseen_share)["map@25"]

    # The trained model's own scores are in the stage's output: order by them alone.
    reranked = pd.read_parquet(pointwise_run / "reranked" / "fold_0.parquet")
    trained = rerank_top(
        reranked,
        cfg.reranker.depth,
        cfg.reranker.pointwise,
        lambda top: (top["reranker_score"].to_numpy(), np.ones(len(top), dtype=bool)),
    )
    untrained = pointwise_run.parent / "untrained"
    CrossEncoder(str(pointwise_run / "retriever" / "fold_0" / "model"), num_labels=1).save(
        str(untrained / "cross_encoder")
    )
    candidates = pd.read_parquet(pointwise_run / "candidates" / "fold_0.parquet")
    val = candidates[candidates["part"] == "val"]
    start = PointwiseReranker(untrained, labelled, load_misconceptions(pointwise_run), cfg).rerank(cfg, val, pairs)
    assert map25(trained) > map25(start) + 0.01


@pytest.mark.slow
def test_infer_writes_the_reranked_submission(pointwise_run):
    from conftest import assert_submission_reranked

    assert_submission_reranked(pointwise_run)


@pytest.mark.slow
def test_serve_uses_the_cross_encoder(pointwise_run, sample_dir):
    from conftest import assert_serve_matches_infer

    assert_serve_matches_infer(pointwise_run, sample_dir / "test.csv", "pointwise", "sentence-transformers")
