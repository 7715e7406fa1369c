"""Synthesis tensor parallelism vs the devices this machine has (issue 20, item 7): no vLLM needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from eedi.config import load_config
from eedi.errors import ConfigError
from eedi.synthesis.engine import engine_settings, visible_devices
from eedi.synthesis.stage import synthesize


def _config(tmp_path: Path, *overrides: str):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    return load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            "runtime.device=cpu",
            "synthetic.enabled=true",
            f"synthetic.engine.model={model}",
        ]
        + list(overrides),
    )


def test_default_is_one_device_and_the_shipped_cuda_config_asks_for_one():
    assert load_config().synthetic.engine.tensor_parallel_size == 1
    shipped = load_config(REPO / "configs" / "qwen2.5-14b.yaml")
    assert shipped.synthetic.engine.tensor_parallel_size in (1, "auto")


def test_auto_is_every_visible_device(tmp_path):
    count, _ = visible_devices(_config(tmp_path))
    settings = engine_settings(_config(tmp_path, "synthetic.engine.tensor_parallel_size=auto"))
    assert settings.kwargs["tensor_parallel_size"] == count >= 1


def test_more_devices_than_visible_is_one_error_naming_the_key_at_stage_start(tmp_path):
    count, _ = visible_devices(_config(tmp_path))
    config = _config(tmp_path, f"synthetic.engine.tensor_parallel_size={count + 1}")
    # the run folder is empty: the device check comes before reading the prepared pairs
    with pytest.raises(ConfigError, match=rf"^synthetic.engine.tensor_parallel_size={count + 1} but only {count} "):
        synthesize(config)


def test_tensor_parallel_zero_or_words_are_refused(tmp_path):
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="tensor_parallel_size"):
            _config(tmp_path, f"synthetic.engine.tensor_parallel_size={bad}")
