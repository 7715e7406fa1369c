"""Training on several processes: per-rank devices, GradCache under DDP, steps by world size, the merge's
memory, and `eedi run` launching the training stages under torchrun (2 CPU processes on gloo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from eedi.config import RuntimeConfig
from eedi.runtime import Placement, model_kwargs, processes, rank_device, resolve

CPU = resolve(RuntimeConfig(device="cpu", dtype="float32"))


def torchrun(*args: str, timeout: int, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node N ...`` (gloo on CPU), killed after ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


# --------------------------------------------------------------------------- devices


def test_each_local_rank_gets_its_own_gpu():
    assert [rank_device("cuda", r) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert rank_device("cpu", 3) == "cpu"
    assert rank_device("cuda:2", 0) == "cuda:2"  # a device the user named stays named


def test_qlora_loads_onto_the_ranks_own_gpu():
    """bitsandbytes quantizes onto the device_map's GPU: rank 1 must not load onto cuda:0 (no GPU needed)."""
    placement = Placement("cuda:1", torch.bfloat16, "sdpa")
    assert model_kwargs(placement, load_in_4bit=True)["device_map"] == {"": 1}
    assert model_kwargs(CPU, load_in_4bit=True)["device_map"] == {"": "cpu"}


def test_a_single_process_is_rank_0_of_1_on_its_own_device():
    procs = processes(CPU)
    assert (procs.rank, procs.local_rank, procs.world_size, procs.is_main) == (0, 0, 1, True)
    assert procs.placement == CPU


RANKS_SCRIPT = """
import json, sys
from eedi.config import RuntimeConfig
from eedi.runtime import processes, rank_device, resolve
import torch.distributed as dist
p = processes(resolve(RuntimeConfig(device="cpu")), timeout_s=60)
print(json.dumps({"rank": p.rank, "local_rank": p.local_rank, "world": p.world_size, "device": p.placement.device,
                  "backend": dist.get_backend(), "cuda": rank_device("cuda", p.local_rank)}))
"""


def test_two_gloo_ranks_resolve_their_rank_and_device(tmp_path):
    """Under torchrun each process learns its rank and local rank from accelerate (gloo on CPU)."""
    import json

    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    result = torchrun(str(script), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    # the ranks share one stdout: their lines can interleave, so take every (flat) JSON object in it
    seen = sorted((json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", result.stdout)), key=str)
    assert sorted(s["rank"] for s in seen) == [0, 1]
    for s in seen:
        assert s["world"] == 2 and s["backend"] == "gloo" and s["device"] == "cpu"
        assert s["local_rank"] == s["rank"] and s["cuda"] == f"cuda:{s['rank']}"


# --------------------------------------------------------------------------- GradCache under DDP


@pytest.mark.slow  # ~20 s each on 2 shared cores
@pytest.mark.timeout(400)
@pytest.mark.parametrize("gradient_cache", [True, False])
def test_two_ranks_reproduce_the_single_process_gradients_of_the_global_batch(
    tiny_qwen2_path, tmp_path, gradient_cache
):
    """2 gloo ranks, each with half of an 8-query batch and a different number of documents (so of GradCache
    mini-batches), end with the gradients one process computes on all 8 queries, and do not hang."""
    sys.path.insert(0, str(REPO / "tests"))
    from ddp_gradcache_worker import batch, global_batch, gradients, model_and_loss

    result = torchrun(
        str(REPO / "tests" / "ddp_gradcache_worker.py"),
        str(tiny_qwen2_path),
        str(tmp_path),
        str(gradient_cache).lower(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    model, loss, sampler = model_and_loss(str(tiny_qwen2_path), CPU, gradient_cache)
    model.train()
    features, labels = batch(model, sampler, global_batch(range(8)))
    value = loss([features], labels)
    value.backward()
    expected = gradients(model)
    torch.testing.assert_close(ranks[0]["grads"], ranks[1]["grads"])  # DDP left the ranks in step
    torch.testing.assert_close(ranks[0]["grads"], expected, atol=1e-6, rtol=1e-4)
    # the global loss is the mean of the ranks' losses (4 queries each)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, value.detach(), atol=1e-5, rtol=1e-5)


def test_parameters_the_embedding_never_reads_are_frozen_for_ddp(minilm_path):
    """MiniLM's pooler takes no part in the sentence embedding: under DDP it would never get a gradient and
    the second step would fail ("Expected to have finished reduction in the prior iteration")."""
    from eedi.config import RetrieverConfig
    from eedi.retrieval.model import build_model, freeze_unused

    model = build_model(RetrieverConfig(backbone=str(minilm_path), lora={"enabled": False}), CPU)
    trainable = sum(p.requires_grad for p in model.parameters())
    assert sorted(freeze_unused(model)) == ["0.model.pooler.dense.bias", "0.model.pooler.dense.weight"]
    assert sum(p.requires_grad for p in model.parameters()) == trainable - 2
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- steps by world size


def test_steps_and_warmup_shrink_with_the_number_of_processes():
    """Each optimizer step consumes batch x accumulation rows on every rank: 2 ranks take half the steps, and
    the warm-up is its share of those (it was computed for one process whatever the world size)."""
    from eedi.config import RetrieverConfig
    from eedi.retrieval.train import schedule

    cfg = RetrieverConfig(batch_size=8, grad_accum=2, epochs=2, warmup_ratio=0.1)
    one, two, four = (schedule(cfg, 1000, w) for w in (1, 2, 4))
    assert (one["steps_per_epoch"], two["steps_per_epoch"], four["steps_per_epoch"]) == (63, 32, 16)
    assert (one["total_steps"], two["total_steps"], four["total_steps"]) == (126, 64, 32)
    assert (one["warmup_steps"], two["warmup_steps"], four["warmup_steps"]) == (13, 6, 3)
    capped = schedule(RetrieverConfig(max_steps=10, warmup_ratio=0.2), 1000, 2)
    assert capped["total_steps"] == 10 and capped["warmup_steps"] == 2


# --------------------------------------------------------------------------- the retriever's merge


def test_the_adapter_merges_after_the_trained_model_is_freed(prepared_sample, tiny_qwen2_path, tmp_path, monkeypatch):
    """Rank 0 merges the LoRA adapter into a fresh backbone only once the trained model is gone (a 14B backbone
    held twice in bf16 needs ~65 GB), and the merged model is the one peft's merge_and_unload gives."""
    import gc
    import weakref

    from peft import PeftModel
    from safetensors.torch import load_file
    from test_retriever import fresh_run, tiny_config

    import eedi.retrieval.train as train_module
    from eedi.retrieval.model import build_model

    trained, alive_at_merge = [], []

    def spy(cfg, placement, trainable=True, load_in_4bit=None):
        if not trainable:  # the merge's backbone
            gc.collect()
            alive_at_merge.append([ref() is not None for ref in trained])
        model = build_model(cfg, placement, trainable=trainable, load_in_4bit=load_in_4bit)
        if trainable:
            trained.append(weakref.ref(model))
        return model

    monkeypatch.setattr(train_module, "build_model", spy)
    run_dir = fresh_run(prepared_sample, tmp_path / "run")
    config = tiny_config(run_dir, tiny_qwen2_path, "retriever.max_steps=2", "retriever.save_steps=2")
    train_module.train_fold(config, 0)
    assert alive_at_merge == [[False]], "the trained model was still in memory when the merge loaded a backbone"

    out = run_dir / "retriever" / "fold_0"
    reference = build_model(config.retriever, CPU, trainable=False, load_in_4bit=False)
    reference[0].model = PeftModel.from_pretrained(reference[0].model, str(out / "adapter")).merge_and_unload()
    merged = load_file(str(out / "model" / "model.safetensors"))
    expected = reference[0].model.state_dict()
    assert merged.keys() == expected.keys()
    for key, value in merged.items():
        torch.testing.assert_close(value, expected[key])


# --------------------------------------------------------------------------- the reranker's sharding keys


def test_fsdp_reaches_the_trainer_and_its_arguments_validate(tmp_path):
    from test_reranker import tiny_config as reranker_config

    from eedi.rerank.train import training_arguments

    procs = processes(CPU)
    config = reranker_config(
        tmp_path,
        tmp_path,
        "reranker.fsdp=full_shard auto_wrap",
        "reranker.fsdp_config={transformer_layer_cls_to_wrap: [Qwen2DecoderLayer]}",
    )
    args = training_arguments(config, procs, tmp_path / "checkpoints")
    assert args.fsdp and args.fsdp_config["transformer_layer_cls_to_wrap"] == ["Qwen2DecoderLayer"]
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "Qwen2DecoderLayer"
    assert args.ddp_timeout == config.runtime.ddp_timeout
    plain = training_arguments(reranker_config(tmp_path, tmp_path), procs, tmp_path / "checkpoints")
    assert not plain.fsdp and plain.deepspeed is None


def test_sharding_keys_are_checked_at_load_time(tmp_path):
    from eedi.config import load_config
    from eedi.errors import ConfigError

    ds = tmp_path / "zero3.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    cases = {
        "fsdp and deepspeed": ["reranker.fsdp=full_shard", f"reranker.deepspeed={ds}"],
        "fsdp_config is set but fsdp is empty": ["reranker.fsdp_config={min_num_params: 1000}"],
        "load_in_4bit": ["reranker.fsdp=full_shard", "reranker.load_in_4bit=true"],
        "no such file": [f"reranker.deepspeed={tmp_path / 'missing.json'}"],
        "unknown FSDP option": ["reranker.fsdp=full_shard zero3"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match="reranker") as err:
            load_config(REPO / "configs" / "cpu.yaml", overrides)
        assert message in str(err.value), (message, str(err.value))
    assert load_config(REPO / "configs" / "cpu.yaml", [f"reranker.deepspeed={ds}"]).reranker.deepspeed == ds


def test_deepspeed_without_the_package_is_one_clear_error(tmp_path):
    import importlib.util

    from test_reranker import tiny_config as reranker_config

    from eedi.errors import EnvironmentMissing
    from eedi.rerank.train import training_arguments

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    ds = tmp_path / "zero3.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    config = reranker_config(tmp_path, tmp_path, f"reranker.deepspeed={ds}")
    with pytest.raises(EnvironmentMissing, match="reranker.deepspeed"):
        training_arguments(config, processes(CPU), tmp_path / "checkpoints")


# --------------------------------------------------------------------------- eedi run's launcher


def test_eedi_run_puts_only_the_training_stages_under_torchrun():
    from eedi.config import load_config
    from eedi.pipeline.registry import STAGES
    from eedi.pipeline.runner import nproc_per_node, stage_command

    assert {s.name for s in STAGES if s.distributed} == {"train-retriever", "train-reranker"}
    assert stage_command("py", "train-reranker", True, 4) == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "eedi",
        "train-reranker",
    ]
    assert stage_command("py", "train-reranker", True, 1) == ["py", "-m", "eedi", "train-reranker"]
    assert stage_command("py", "index", False, 4) == ["py", "-m", "eedi", "index"]
    cfg = load_config(REPO / "configs" / "cpu.yaml", [])
    assert nproc_per_node(cfg) == max(1, torch.cuda.device_count())  # default: every visible GPU, 1 on a CPU
    assert nproc_per_node(load_config(REPO / "configs" / "cpu.yaml", ["runtime.nproc_per_node=3"])) == 3


@pytest.mark.slow
def test_eedi_run_trains_both_stages_on_two_gloo_processes(prepared_sample, tiny_qwen2_path, tmp_path):
    """`eedi run` with runtime.nproc_per_node=2 starts train-retriever (GradCache on) and train-reranker under
    torchrun: 2 CPU processes on gloo train each, rank 0 writes the models, the manifest and the metrics."""
    import json

    from test_retriever import fresh_run

    run_dir = fresh_run(prepared_sample, tmp_path / "run")
    overrides = [
        f"run_dir={run_dir}",
        "synthetic.enabled=false",
        "synthetic.use=false",
        "runtime.nproc_per_node=2",
        "runtime.num_threads=1",
        # the tiny random Qwen2 for both models: the index and the validation encodings take seconds, not minutes
        f"retriever.backbone={tiny_qwen2_path}",
        "retriever.max_length=64",
        "retriever.gradient_cache=true",
        "retriever.max_steps=4",
        "retriever.batch_size=8",
        "retriever.mini_batch_size=4",
        "retriever.hard_negative_refresh_steps=2",
        "retriever.save_steps=2",
        f"reranker.backbone={tiny_qwen2_path}",
        "reranker.lora.layers=null",
        "reranker.max_train_windows=16",
        "reranker.max_length=256",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    stages = "train-retriever,index,train-reranker"
    command = [sys.executable, "-m", "eedi", "run", "--config", str(REPO / "configs" / "cpu.yaml"), "--stages", stages]
    result = subprocess.run([*command, *overrides], capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    logs = {s: (run_dir / "logs" / f"{s}.log").read_text() for s in ("train-retriever", "train-reranker")}
    assert result.returncode == 0, result.stderr[-3000:] + logs["train-reranker"][-3000:]
    for log_text in logs.values():
        assert "torch.distributed.run --standalone --nproc_per_node 2 -m eedi" in log_text

    retriever_log = [
        json.loads(x) for x in (run_dir / "retriever" / "fold_0" / "train_log.jsonl").read_text().splitlines()
    ]
    assert retriever_log[0]["world_size"] == 2 and retriever_log[-1]["step"] == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for stage in ("train-retriever", "index", "train-reranker"):
        assert manifest["stages"][stage]["status"] == "done", stage
    fold = manifest["stages"]["train-reranker"]["summary"]["folds"]["fold_0"]
    # 16 windows over 2 processes x batch 2: 4 optimizer steps (one process would take 8)
    assert fold["train"]["processes"] == 2 and fold["train"]["steps"] == 4
    assert 0.0 <= fold["reranker_map@25"] <= 1.0
    assert (run_dir / "reranker" / "fold_0" / "merged" / "config.json").exists()
    assert (run_dir / "reranked" / "fold_0.parquet").exists()
