"""`eedi plan`: memory arithmetic from architecture configs on the meta device (issue 20, deliverable 3)."""

from __future__ import annotations

import pytest
from conftest import REPO
from transformers import AutoModel, Qwen2Config, Qwen2ForCausalLM

from eedi.cli import main
from eedi.config import load_config
from eedi.errors import ConfigError
from eedi.plan import parse_gpus, plan_config
from eedi.plan.arch import load_arch, shipped_archs
from eedi.plan.memory import GB, lora_params, lora_targets, weight_bytes

SHIPPED_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_qwen25_14b_bf16_weights_are_29_5_gb_offline():
    arch = load_arch("Qwen/Qwen2.5-14B-Instruct", "reranker.backbone", causal_lm=True)
    assert arch.source.endswith("qwen2.5-14b.json")  # shipped, nothing fetched
    assert arch.params == pytest.approx(14.7e9, rel=0.01)  # the model card's 14.7B
    assert weight_bytes(arch, 2) == pytest.approx(29.5 * GB, rel=0.02)
    # base and Instruct share the architecture
    assert load_arch("Qwen/Qwen2.5-14B", "x", causal_lm=True).params == arch.params


@pytest.mark.parametrize(
    "model_id, published", [("Qwen/Qwen2.5-7B", 7.61e9), ("Qwen/Qwen2.5-32B", 32.8e9), ("Qwen/Qwen2.5-72B", 72.7e9)]
)
def test_shipped_sizes_match_the_published_parameter_counts(model_id, published):
    assert load_arch(model_id, "x", causal_lm=True).params == pytest.approx(published, rel=0.01)


def test_every_shipped_arch_builds_on_the_meta_device():
    for model_id in shipped_archs():
        assert load_arch(model_id, "x", causal_lm="minilm" not in model_id).params > 0


def _tiny_qwen2(tmp_path):
    config = Qwen2Config(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    config.save_pretrained(tmp_path / "tiny")
    return config, tmp_path / "tiny"


def test_tiny_qwen2_is_planned_exactly(tmp_path):
    from peft import LoraConfig, get_peft_model

    config, folder = _tiny_qwen2(tmp_path)
    causal = load_arch(str(folder), "reranker.backbone", causal_lm=True)
    real = Qwen2ForCausalLM(config)
    assert causal.params == sum(p.numel() for p in real.parameters())
    assert weight_bytes(causal, 4) == sum(p.numel() * p.element_size() for p in real.parameters())
    encoder = load_arch(str(folder), "retriever.backbone", causal_lm=False)
    assert encoder.params == sum(p.numel() for p in AutoModel.from_config(config).parameters())
    # LoRA on the top two layers, as reranker.lora.layers=2 asks: the count peft trains
    modules = lora_targets(causal, TARGETS, [1, 2])
    peft_model = get_peft_model(real, LoraConfig(r=8, target_modules=TARGETS, layers_to_transform=[1, 2]))
    assert lora_params(causal, modules, 8) == peft_model.get_nb_trainable_parameters()[0]

    plan = plan_config(
        load_config(
            None,
            [
                "runtime.device=cpu",
                f"retriever.backbone={folder}",
                f"reranker.backbone={folder}",
                "reranker.lora.r=8",
                "reranker.lora.layers=2",
            ],
        ),
        None,
    )
    by_stage = {s.stage: s for s in plan.stages}
    assert by_stage["train-reranker"].params == causal.params
    assert by_stage["train-reranker"].lora_params == lora_params(causal, modules, 8)
    assert by_stage["train-reranker"].weights == weight_bytes(causal, 4)
    assert by_stage["index"].params == encoder.params
    assert all(s.fits is None for s in plan.stages)  # no GPU given or visible: nothing compared


def test_a_config_too_big_for_one_16gb_gpu_is_flagged(capsys):
    code = main(["plan", "--config", str(REPO / "configs" / "qwen2.5-14b.yaml"), "--gpus", "1x16GB"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FLAG train-retriever" in out and "retriever.load_in_4bit=true" in out
    assert "FLAG synthesize" in out and "synthetic.engine.tensor_parallel_size" in out


def test_the_14b_config_fits_eight_80gb_gpus(capsys):
    assert main(["plan", "--config", str(REPO / "configs" / "qwen2.5-14b.yaml"), "--gpus", "8x80GB"]) == 0
    assert "FLAG" not in capsys.readouterr().out


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_plan_prints_the_table_for_every_shipped_config(name, capsys):
    code = main(["plan", "--config", str(REPO / "configs" / name), "--gpus", "8x80GB"])
    out = capsys.readouterr().out
    assert code == 0, out
    for stage in ("train-retriever", "index", "predict: retriever"):
        assert f"\n{stage} " in out
    assert "peak/GPU GB" in out and "act ckpt GB" in out


def test_kaggle_t4_config_fits_two_t4s_in_fp16(capsys):
    name = str(REPO / "configs" / "qwen2.5-kaggle-t4.yaml")
    assert main(["plan", "--config", name, "--gpus", "2x16GB", "--stages", "predict"]) == 0
    out = capsys.readouterr().out
    assert "every stage fits 2 x 16.0 GB" in out and "\ntrain-retriever " not in out
    config = load_config(REPO / "configs" / "qwen2.5-kaggle-t4.yaml")
    assert config.runtime.dtype == "float16"  # T4 (sm_75) has no bf16
    plan = plan_config(config, parse_gpus("2x16GB"))
    stages = {s.stage: s for s in plan.stages}
    assert stages["predict: retriever"].fits and stages["predict: reranker"].fits
    assert stages["predict: reranker"].precision.startswith("W4A16")
    assert stages["predict: retriever"].precision == "nf4"


def test_gpu_specs():
    assert parse_gpus("8x80GB").count == 8 and parse_gpus("8x80GB").bytes_each == 80e9
    assert parse_gpus("24GiB").count == 1 and parse_gpus("24GiB").bytes_each == 24 * 2**30
    for bad in ("x80GB", "0x80GB", "eight"):
        with pytest.raises(ConfigError, match="--gpus"):
            parse_gpus(bad)


def test_an_unknown_model_id_is_one_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^retriever.backbone='acme/unknown-7b': no architecture config"):
        plan_config(load_config(None, ["retriever.backbone=acme/unknown-7b"]), None)


def test_the_architecture_files_ship_in_the_wheel():
    import tomllib

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "archs/*.json" in package_data["eedi.plan"]
    assert len(shipped_archs()) >= 10  # 7B/14B/32B/72B base + Instruct, the 32B AWQ, the two small models


def test_package_kaggle_packages_the_kaggle_t4_config(tmp_path, minilm_path, tiny_qwen2_path):
    """`eedi package-kaggle` on a run of the Kaggle config: the GPTQ reranker, and the T4 settings in config.yaml."""
    import json
    import shutil

    import yaml

    from eedi.layout import FULL, RunLayout

    run = RunLayout(tmp_path / "run")
    shutil.copytree(minilm_path, run.retriever_model(FULL))
    shutil.copytree(tiny_qwen2_path, run.quantized_model("gptq"))  # stands in for the GPTQ folder: copied as is
    name = str(REPO / "configs" / "qwen2.5-kaggle-t4.yaml")
    assert main(["package-kaggle", "--config", name, f"run_dir={run.root}", "--out", str(tmp_path / "pkg")]) == 0
    package = json.loads((tmp_path / "pkg" / "package.json").read_text())
    assert package["reranker_kind"] == "gptq" and package["infer_backend"] == "vllm"
    assert any(w.startswith("eedi-") for w in package["wheels"])
    packed = yaml.safe_load((tmp_path / "pkg" / "config.yaml").read_text())
    assert packed["runtime"]["dtype"] == "float16" and packed["retriever"]["load_in_4bit"] is True
    assert packed["reranker"]["tensor_parallel_size"] == 2
    assert packed["infer"]["vllm_gpu_memory_utilization"] == 0.85
    assert (tmp_path / "pkg" / "reranker" / "config.json").exists()
