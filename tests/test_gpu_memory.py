"""GPU memory between the predict path's phases, and vLLM's share of it as a config key (issue 20, item 5)."""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO

from eedi.config import config_to_dict, load_config
from eedi.errors import ConfigError
from eedi.rerank.scoring import vllm_engine_kwargs
from eedi.runtime import Placement


def _package(tmp_path, minilm_path):
    """A Kaggle package folder with a real retriever (MiniLM) and the CPU config, reranker enabled."""
    package = tmp_path / "package"
    shutil.copytree(minilm_path, package / "retriever")
    config = load_config(REPO / "configs" / "cpu.yaml", ["reranker.enabled=true"])
    (package / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (package / "package.json").write_text(json.dumps({"reranker_kind": "merged"}))
    return package


def test_retriever_is_released_before_the_reranker_engine_starts(tmp_path, tiny_kaggle, minilm_path, monkeypatch):
    """The SentenceTransformer holds reference cycles: `del` alone leaves it (and its CUDA blocks) alive
    until some later garbage collection, which vLLM's start does not wait for."""
    import eedi.submit.predict as predict_module

    refs = []
    real_load = predict_module.load_encoder

    def load_and_watch(path, placement, *args):
        model = real_load(path, placement, *args)
        refs.append(weakref.ref(model))
        return model

    seen = {}

    def reranker_phase(config, reranker_path, candidates, pairs, misconceptions, out, sample):
        # where the real path builds the reranker's engine (rerank -> make_scorer -> vllm.LLM)
        seen["retriever_alive"] = refs[0]() is not None
        seen["candidates"] = len(candidates)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"QuestionId_Answer": [], "MisconceptionId": []}).to_csv(out, index=False)
        return out

    monkeypatch.setattr(predict_module, "load_encoder", load_and_watch)
    monkeypatch.setattr(predict_module, "rerank_to_submission", reranker_phase)
    gc.disable()  # the test must not depend on when Python's automatic collection happens to run
    try:
        predict_module.predict(tiny_kaggle, _package(tmp_path, minilm_path), tmp_path / "work")
    finally:
        gc.enable()
    assert seen["candidates"] > 0
    assert seen["retriever_alive"] is False


def test_vllm_memory_share_is_a_config_key_that_reaches_the_engine():
    config = load_config(None, ["infer.vllm_gpu_memory_utilization=0.55", "reranker.tensor_parallel_size=2"])
    assert config.infer.vllm_gpu_memory_utilization == 0.55
    kwargs = vllm_engine_kwargs("models/reranker", Placement("cuda", torch.bfloat16, "sdpa"), config)
    assert kwargs["gpu_memory_utilization"] == 0.55
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["dtype"] == "bfloat16"
    assert kwargs["max_model_len"] == config.reranker.max_length + 1
    assert kwargs["enforce_eager"] is False  # CUDA graphs on GPUs
    assert load_config().infer.vllm_gpu_memory_utilization == 0.9  # vLLM's own default


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_vllm_memory_share_outside_0_1_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        load_config(None, [f"infer.vllm_gpu_memory_utilization={value}"])


def test_retriever_load_in_4bit_loads_the_predict_retriever_in_nf4(tmp_path, tiny_kaggle, minilm_path, monkeypatch):
    """configs/qwen2.5-kaggle-t4.yaml: the notebook's retriever in NF4 (bitsandbytes also runs on CPUs)."""
    import bitsandbytes as bnb

    import eedi.submit.predict as predict_module

    kinds = []
    real_load = predict_module.load_encoder

    def load_and_look(path, placement, *args):
        model = real_load(path, placement, *args)
        kinds.append(any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()))
        return model

    def reranker_phase(config, reranker_path, candidates, *rest):
        kinds.append(candidates["QuestionId_Answer"].nunique())
        return reranker_path

    monkeypatch.setattr(predict_module, "load_encoder", load_and_look)
    monkeypatch.setattr(predict_module, "rerank_to_submission", reranker_phase)
    predict_module.predict(
        tiny_kaggle, _package(tmp_path, minilm_path), tmp_path / "work", ["retriever.load_in_4bit=true"]
    )
    assert kinds == [True, 12]  # NF4 layers; candidates for 4 test questions x 3 wrong answers
