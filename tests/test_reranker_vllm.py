"""The reranker's vLLM scoring backend against the transformers one (inference environment only)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from eedi.config import load_config
from eedi.data.artifacts import load_misconceptions, load_pairs
from eedi.rerank.prompts import build_prompt
from eedi.rerank.scoring import make_scorer, score_with

REPO = Path(__file__).resolve().parents[1]


def score(model_path, prompts: list[str], n_labels: int, backend: str, config) -> np.ndarray:
    """(len(prompts), n_labels) label probabilities, through the engine and scoring rerank() uses."""
    scorer = make_scorer(model_path, backend, config)
    try:
        return np.stack(score_with(scorer, prompts, [n_labels] * len(prompts), config.reranker.max_length))
    finally:
        scorer.close()


@pytest.mark.infer
@pytest.mark.slow
def test_vllm_and_transformers_scores_agree(tmp_path, smollm2_path, prepared_sample):
    """Same model, same token ids: the two backends' label probabilities agree within 1e-4.

    Both run float32; they differ only in kernels (measured here: 4.5e-6 at most)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    config = load_config(REPO / "configs" / "cpu.yaml", [f"run_dir={tmp_path}", f"reranker.backbone={smollm2_path}"])
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    pairs = load_pairs(prepared_sample).dropna(subset=["MisconceptionId"]).head(12)
    names = load_misconceptions(prepared_sample)["MisconceptionName"].tolist()
    rng = np.random.default_rng(0)
    prompts = [
        build_prompt(pair, list(rng.choice(names, 5, replace=False)), tokenizer) for pair in pairs.to_dict("records")
    ]
    hf = score(smollm2_path, prompts, 5, "transformers", config)
    vllm = score(smollm2_path, prompts, 5, "vllm", config)
    assert hf.shape == vllm.shape == (12, 5)
    np.testing.assert_allclose(vllm.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(hf - vllm).max() < 1e-4, np.abs(hf - vllm).max()
    assert (hf.argmax(axis=1) == vllm.argmax(axis=1)).all()
