"""The listwise reranker: label tokens, windows, prompts, fusion, training, scoring, the fold-0 result.

Time on a busy 2-core machine: the unit tests ~40 s (tiny random Qwen2); the fold-0 tests reuse the
session fixture ``reranked_sample``, whose train-reranker stage (configs/cpu.yaml) took ~9 min there;
the vLLM test (inference environment) ~2 min, most of it vLLM's engine start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eedi.config import load_config
from eedi.data.schema import RERANKED_COLUMNS
from eedi.errors import MissingInputError
from eedi.rerank.prompts import build_prompt
from eedi.rerank.schemes import fuse, minmax, rerank
from eedi.rerank.scoring import LabelTokenError, TransformersScorer, label_token_ids, make_scorer, score_with
from eedi.rerank.stage import run
from eedi.rerank.train import sft_dataset, train_reranker
from eedi.rerank.windows import sliding_windows, training_windows

REPO = Path(__file__).resolve().parents[1]


def score(model_path, prompts: list[str], n_labels: int, backend: str, config) -> np.ndarray:
    """(len(prompts), n_labels) label probabilities, through the engine and scoring rerank() uses."""
    scorer = make_scorer(model_path, backend, config)
    try:
        return np.stack(score_with(scorer, prompts, [n_labels] * len(prompts), config.reranker.max_length))
    finally:
        scorer.close()


# --------------------------------------------------------------------------- helpers


def tiny_config(tmp_path: Path, backbone: Path, *overrides: str):
    return load_config(
        REPO / "configs" / "cpu.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"reranker.backbone={backbone}",
            "reranker.window_size=4",
            "reranker.depth=6",
            "reranker.stride=2",
            "reranker.batch_size=4",
            "reranker.lora.r=4",
            "reranker.lora.alpha=8",
            "reranker.lora.layers=null",
            "reranker.lr=5e-3",
            "reranker.epochs=2",
            "reranker.max_train_windows=null",
            "reranker.save_steps=1000",
            "runtime.num_threads=null",
            *overrides,
        ],
    )


def toy_tables(n_pairs: int = 4, n_candidates: int = 8) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """pairs, misconceptions and a candidates table (retriever ranks 0..n-1, decreasing cosine)."""
    misconceptions = pd.DataFrame(
        {
            "MisconceptionId": np.arange(10, 10 + n_candidates + 2),
            "MisconceptionName": [f"Misconception number {i}" for i in range(n_candidates + 2)],
        }
    )
    pairs = pd.DataFrame(
        {
            "QuestionId_Answer": [f"{q}_B" for q in range(n_pairs)],
            "QueryText": [
                f"Construct: Add fractions\nQuestion: 1/{q + 2} + 1/4\nIncorrect answer: 2/{q + 6}"
                for q in range(n_pairs)
            ],
            "MisconceptionId": pd.array([10 + (q % n_candidates) for q in range(n_pairs)], dtype="Int64"),
        }
    )
    rows = [
        (f"{q}_B", r, 10 + (r + q) % n_candidates, 0.9 - 0.05 * r, 0, "val")
        for q in range(n_pairs)
        for r in range(n_candidates)
    ]
    candidates = pd.DataFrame(rows, columns=["QuestionId_Answer", "rank", "MisconceptionId", "score", "fold", "part"])
    return pairs, misconceptions, candidates


# --------------------------------------------------------------------------- label tokens


def test_label_tokens_are_single_tokens(smollm2_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    ids = label_token_ids(tokenizer, 5)
    assert len(set(ids)) == 5
    assert [tokenizer.decode([i]) for i in ids] == list("ABCDE")


def test_label_tokens_clear_error(smollm2_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # A word-level vocabulary without "C": the third label is the unknown token.
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "A": 1, "B": 2, "D": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    no_c = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert label_token_ids(no_c, 2) == [1, 2]
    with pytest.raises(LabelTokenError, match=r"label 'C' .*unknown token"):
        label_token_ids(no_c, 3)
    # Labels that a real BPE tokenizer splits into several tokens.
    smollm2 = AutoTokenizer.from_pretrained(smollm2_path)
    with pytest.raises(LabelTokenError, match=r"label 'Qzx9' is \d tokens"):
        label_token_ids(smollm2, 2, labels=("A", "Qzx9"))
    with pytest.raises(LabelTokenError, match="n=27"):
        label_token_ids(smollm2, 27)


# --------------------------------------------------------------------------- windows and prompts


def _positive_candidates(positive_rank: int | None, n: int = 12) -> tuple[pd.DataFrame, int]:
    """One pair whose candidate list holds the positive (id 999) at positive_rank, or not at all."""
    ids = list(range(100, 100 + n))
    if positive_rank is not None:
        ids[positive_rank] = 999
    frame = pd.DataFrame(
        {"QuestionId_Answer": "1_B", "rank": range(n), "MisconceptionId": ids, "score": np.linspace(0.9, 0.3, n)}
    )
    return frame, 999


def test_hard_window_keeps_positive_in_place_among_its_neighbours():
    candidates, positive = _positive_candidates(6)
    windows = training_windows(
        candidates,
        {"1_B": positive},
        window_size=5,
        windows_per_pair=40,
        hard_ratio=1.0,
        depth=12,
        rng=np.random.default_rng(0),
    )
    assert (windows["kind"] == "hard").all()
    rank_of = dict(zip(candidates["MisconceptionId"], candidates["rank"]))
    targets = set()
    for ids, target in zip(windows["candidate_ids"], windows["target"]):
        assert ids[target] == positive and len(set(ids)) == 5
        ranks = [rank_of[c] for c in ids]
        assert ranks == sorted(ranks), "windows keep retriever order"
        assert max(abs(r - 6) for r in ranks) <= 4, "hard negatives sit next to the positive's rank"
        targets.add(target)
    assert targets == {0, 1, 2, 3, 4}, "a random block offset moves the positive over every label"


def test_missed_positive_is_inserted_at_random_positions():
    candidates, positive = _positive_candidates(None)
    for ratio in (0.0, 1.0):
        windows = training_windows(candidates, {"1_B": positive}, 5, 50, ratio, 12, np.random.default_rng(1))
        assert all(ids[t] == positive for ids, t in zip(windows["candidate_ids"], windows["target"]))
        assert set(windows["target"]) == {0, 1, 2, 3, 4}
        negatives = [[c for c in ids if c != positive] for ids in windows["candidate_ids"]]
        assert all(len(n) == 4 and set(n) <= set(candidates["MisconceptionId"]) for n in negatives)
    hard = training_windows(candidates, {"1_B": positive}, 5, 5, 1.0, 12, np.random.default_rng(1))
    # A positive below the list would rank after its last candidates: those are its neighbours.
    assert all(sorted(c for c in ids if c != positive) == list(range(108, 112)) for ids in hard["candidate_ids"])


def test_shuffled_windows_hide_the_retriever_rank():
    # The retriever put the positive first: in retriever order every target would be "A".
    candidates, positive = _positive_candidates(0)
    plain = training_windows(candidates, {"1_B": positive}, 5, 60, 0.5, 12, np.random.default_rng(3))
    assert set(plain["target"]) == {0}
    shuffled = training_windows(candidates, {"1_B": positive}, 5, 60, 0.5, 12, np.random.default_rng(3), shuffle=True)
    assert all(ids[t] == positive for ids, t in zip(shuffled["candidate_ids"], shuffled["target"]))
    assert set(shuffled["target"]) == {0, 1, 2, 3, 4}
    assert all(
        len(set(ids)) == 5 and set(ids) <= set(candidates["MisconceptionId"]) for ids in shuffled["candidate_ids"]
    )


def test_random_windows_draw_from_depth_and_ratio_is_exact():
    frames, positives = [], {}
    for q in range(10):
        frame, positive = _positive_candidates(q % 4, n=20)
        frames.append(frame.assign(QuestionId_Answer=f"{q}_B"))
        positives[f"{q}_B"] = positive
    candidates = pd.concat(frames, ignore_index=True)
    windows = training_windows(candidates, positives, 4, 3, 0.3, depth=8, rng=np.random.default_rng(2))
    assert len(windows) == 30 and (windows["kind"] == "hard").sum() == 9  # round(0.3 * 30)
    for ids, target in zip(windows["candidate_ids"], windows["target"]):
        assert ids[target] == 999
        assert all(c == 999 or c < 108 for c in ids), "only the top `depth` candidates are used"
    capped = training_windows(candidates, positives, 4, 3, 0.3, 8, np.random.default_rng(2), max_windows=7)
    assert len(capped) == 7


def test_pairs_without_candidates_get_corpus_windows():
    windows = training_windows(
        pd.DataFrame(columns=["QuestionId_Answer", "rank", "MisconceptionId", "score"]),
        {"syn_1": 3},
        4,
        2,
        1.0,
        25,
        np.random.default_rng(0),
        corpus_ids=range(10),
    )
    assert list(windows["kind"]) == ["random", "random"]
    assert all(ids[t] == 3 and len(set(ids)) == 4 for ids, t in zip(windows["candidate_ids"], windows["target"]))


def test_prompt_holds_question_context_and_labelled_candidates(smollm2_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    pair = {
        "QueryText": "Construct: Add fractions\nSubject: Fractions\nQuestion: 1/2+1/4\n"
        "Correct answer: 3/4\nIncorrect answer: 2/6"
    }
    prompt = build_prompt(pair, ["Adds numerators and denominators", "Multiplies instead", "Rounds down"], tokenizer)
    for text in (
        "Construct: Add fractions",
        "Subject: Fractions",
        "Correct answer: 3/4",
        "Incorrect answer: 2/6",
        "A. Adds numerators and denominators\nB. Multiplies instead\nC. Rounds down",
        "(A-C)",
    ):
        assert text in prompt
    assert "D." not in prompt
    assert prompt.endswith("<|im_start|>assistant\n"), "the prompt ends where the label is generated"


# --------------------------------------------------------------------------- fusion and window plans


def test_fusion_by_hand():
    # retriever 0.9, 0.7, 0.5 -> min-max 1, 0.5, 0; w = 0.5
    fused = fuse([0.5, 0.3, 0.2], [0.9, 0.7, 0.5], 0.5)
    np.testing.assert_allclose(fused, [0.75, 0.4, 0.1])
    np.testing.assert_allclose(fuse([0.1, 0.9], [0.8, 0.2], 1.0), [0.1, 0.9])
    np.testing.assert_allclose(fuse([0.1, 0.9], [0.8, 0.2], 0.0), [1.0, 0.0])
    np.testing.assert_allclose(minmax([0.4, 0.4]), [0.0, 0.0])


def test_sliding_windows_cover_every_rank():
    assert sliding_windows(25, 5, 5) == [list(range(s, s + 5)) for s in (0, 5, 10, 15, 20)]
    assert sliding_windows(7, 4, 2) == [[0, 1, 2, 3], [2, 3, 4, 5], [3, 4, 5, 6]]
    assert sliding_windows(3, 5, 5) == [[0, 1, 2]]
    assert sliding_windows(0, 5, 5) == []


# --------------------------------------------------------------------------- tiny Qwen2: train and score


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory, tiny_qwen2_path):
    """The tiny random Qwen2 trained a few steps on toy windows; returns (config, out_dir, summary)."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("tiny_reranker")
    config = tiny_config(tmp, tiny_qwen2_path)
    pairs, misconceptions, candidates = toy_tables()
    positives = dict(zip(pairs["QuestionId_Answer"], pairs["MisconceptionId"].astype(int)))
    windows = training_windows(candidates, positives, 4, 4, 0.5, 6, np.random.default_rng(0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    names = dict(zip(misconceptions["MisconceptionId"], misconceptions["MisconceptionName"]))
    dataset = sft_dataset(
        windows,
        {r["QuestionId_Answer"]: r for r in pairs.to_dict("records")},
        names,
        tokenizer,
        4,
        config.reranker.max_length,
    )
    out_dir = tmp / "fold"
    summary = train_reranker(config, dataset, out_dir)
    return config, out_dir, summary, dataset


def test_dataset_masks_everything_but_the_label(tiny_reranker, tiny_qwen2_path):
    from transformers import AutoTokenizer

    _, _, _, dataset = tiny_reranker
    labels = label_token_ids(AutoTokenizer.from_pretrained(tiny_qwen2_path), 4)
    for row in dataset:
        assert sum(row["completion_mask"]) == 1 and row["completion_mask"][-1] == 1
        assert row["input_ids"][-1] in labels


def test_tiny_qwen2_trains_a_few_steps(tiny_reranker):
    from safetensors.torch import load_file

    config, out_dir, summary, _ = tiny_reranker
    assert summary["steps"] == 8 and math.isfinite(summary["train_loss"])
    weights = load_file(out_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    # peft initialises lora_B to zero: non-zero means the adapter learned.
    assert lora_b and all(float(w.abs().max()) > 0 for w in lora_b)
    modules = {name.split(".")[-3] for name in weights}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= modules
    assert (out_dir / "train_log.jsonl").read_text().strip()


def test_tiny_qwen2_merges_and_scores_a_window(tiny_reranker, tiny_qwen2_path):
    from transformers import AutoTokenizer

    from eedi.rerank.train import merge_adapter

    config, out_dir, _, _ = tiny_reranker
    merged = merge_adapter(out_dir / "adapter", out_dir / "merged", config)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    pairs, misconceptions, _ = toy_tables()
    prompt = build_prompt(pairs.iloc[0], misconceptions["MisconceptionName"][:4].tolist(), tokenizer)
    probs = score(merged, [prompt, prompt], 4, "transformers", config)
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    base = score(tiny_qwen2_path, [prompt], 4, "transformers", config)
    assert not np.allclose(base, probs[0], atol=1e-4), "the merged adapter changes the scores"


def test_a_left_padded_batch_scores_each_prompt_as_if_alone(tiny_qwen2_path):
    """Prompts of different lengths in one batch (tokenizer.pad, left padding, positions from the mask) score
    exactly as each one alone, unpadded: the padding never reaches the label's probability."""
    from eedi.config import RuntimeConfig
    from eedi.runtime import resolve

    cpu = resolve(RuntimeConfig(device="cpu", dtype="float32"))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(5, 400, size=n).tolist() for n in (7, 31, 12, 64, 3)]
    labels = [30, 31, 32, 33]
    batched = TransformersScorer(tiny_qwen2_path, cpu, batch_size=8).label_logprobs(prompts, labels)
    alone = TransformersScorer(tiny_qwen2_path, cpu, batch_size=1).label_logprobs(prompts, labels)
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    assert np.ptp(batched[:, 0]) > 1e-3  # the prompts do score differently: the comparison means something


@pytest.mark.parametrize("scheme", ["sliding", "tournament"])
def test_rerank_reorders_top_depth_only(tiny_reranker, tiny_qwen2_path, scheme):
    config, _, _, _ = tiny_reranker
    config = config.model_copy(
        update={
            "reranker": config.reranker.model_copy(
                update={"scheme": scheme, "tta_reverse": scheme == "tournament", "fusion_weight": 0.7}
            )
        }
    )
    pairs, misconceptions, candidates = toy_tables(n_pairs=3, n_candidates=10)
    out = rerank(config, tiny_qwen2_path, candidates, pairs, misconceptions, "transformers")
    assert list(out.columns) == RERANKED_COLUMNS and len(out) == len(candidates)
    depth = config.reranker.depth
    for _key, group in out.groupby("QuestionId_Answer"):
        assert sorted(group["final_rank"]) == list(range(10))
        top, rest = group[group["rank"] < depth], group[group["rank"] >= depth]
        assert sorted(top["final_rank"]) == list(range(depth)), "the reranked block fills the first places"
        assert (rest["final_rank"] == rest["rank"]).all(), "below depth: retriever order"
        assert rest["reranker_score"].isna().all() and top["reranker_score"].notna().all()
        by_final = top.sort_values("final_rank")
        assert by_final["final_score"].is_monotonic_decreasing
        if scheme == "sliding":
            expected = fuse(top["reranker_score"], top["score"], 0.7)
            np.testing.assert_allclose(top["final_score"], expected)


def test_rerank_rejects_unknown_pairs(tiny_reranker, tiny_qwen2_path):
    config, _, _, _ = tiny_reranker
    pairs, misconceptions, candidates = toy_tables()
    with pytest.raises(KeyError, match="not in pairs.parquet"):
        rerank(config, tiny_qwen2_path, candidates, pairs.iloc[1:], misconceptions, "transformers")


def test_stage_without_candidates_names_the_file(tmp_path, tiny_qwen2_path, prepared_sample):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(prepared_sample, run_dir)
    shutil.rmtree(run_dir / "candidates", ignore_errors=True)  # the shared run may be indexed already
    config = tiny_config(tmp_path, tiny_qwen2_path)
    with pytest.raises(MissingInputError, match=r"candidates/fold_0.parquet not found: run `eedi index` first"):
        run(config)


# --------------------------------------------------------------------------- data/sample, fold 0


def test_reranked_sample_outputs(reranked_sample):
    metrics = json.loads((reranked_sample / "metrics.json").read_text())["fold_0"]
    for key in ("map@25", "recall@25", "map@25_seen"):
        assert key in metrics["reranker"]
    # group folds on the sample leave no unseen misconception in validation, so map@25_unseen is absent
    assert metrics["reranker"]["n_unseen"] == metrics["retriever"]["n_unseen"]
    assert ("map@25_unseen" in metrics["reranker"]) == (metrics["reranker"]["n_unseen"] > 0)
    assert metrics["reranker"]["n"] == metrics["retriever"]["n"]
    reranked = pd.read_parquet(reranked_sample / "reranked" / "fold_0.parquet")
    assert list(reranked.columns) == RERANKED_COLUMNS
    assert (reranked["part"] == "val").all()
    assert (
        reranked.groupby("QuestionId_Answer")["final_rank"].apply(sorted).apply(lambda r: r == list(range(len(r))))
    ).all()
    fold_dir = reranked_sample / "reranker" / "fold_0"
    assert (fold_dir / "merged" / "config.json").exists() and (fold_dir / "adapter" / "adapter_config.json").exists()
    windows = pd.read_parquet(fold_dir / "train_windows.parquet")
    candidates = pd.read_parquet(reranked_sample / "candidates" / "fold_0.parquet")
    assert set(windows["QuestionId_Answer"]) <= set(candidates.loc[candidates["part"] == "train", "QuestionId_Answer"])


@pytest.mark.open_bar  # not met reliably yet: docs/results.md "Train-reranker"; `make test-bars` runs it
def test_reranker_beats_retriever_on_sample_fold0(reranked_sample):
    """The issue's bar: on the same fold-0 candidates, reranked MAP@25 above the retriever's."""
    metrics = json.loads((reranked_sample / "metrics.json").read_text())["fold_0"]
    assert metrics["reranker"]["map@25"] > metrics["retriever"]["map@25"], {
        name: metrics[name]["map@25"] for name in ("retriever", "reranker")
    }
