"""The vLLM engine: settings, start/stop, batched structured generation and the optional judge."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from eedi.config import Config
from eedi.errors import ConfigError
from eedi.progress import bar_factory
from eedi.runtime import resolve
from eedi.synthesis.prompts import (
    JUDGE_CHOICES,
    TargetPrompt,
    judge_messages,
    output_schema,
    render_chat,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- engine


def check_model_source(value: str, key: str) -> str:
    """A local model folder (returned absolute) or a hub id that can be loaded; else ConfigError naming ``key``."""
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}={value!r}: {path} has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    parts = value.split("/")
    if len(parts) == 2 and all(parts) and not value.startswith((".", "~")):
        if not constants.HF_HUB_OFFLINE:
            return value
        if isinstance(try_to_load_from_cache(value, "config.json"), str):
            return value
        raise ConfigError(
            f"{key}={value!r}: no such folder, and not in the Hugging Face cache "
            "(HF_HUB_OFFLINE is set, so nothing is downloaded)"
        )
    raise ConfigError(f"{key}={value!r}: no such model folder")


@dataclass
class EngineSettings:
    """The resolved, checked ``vllm.LLM`` arguments."""

    kwargs: dict

    @property
    def model(self) -> str:
        return self.kwargs["model"]


def engine_settings(config: Config) -> EngineSettings:
    """Resolve synthetic.engine into LLM kwargs; the checks that need no vLLM import (model, dtype)."""
    engine = config.synthetic.engine
    model = check_model_source(engine.model, "synthetic.engine.model")
    dtype = engine.dtype
    if dtype == "auto":
        dtype = str(resolve(config.runtime).dtype).removeprefix("torch.")
    local_config = Path(model) / "config.json"
    if local_config.is_file():
        hf_config = json.loads(local_config.read_text(encoding="utf-8"))
        limit = hf_config.get("max_position_embeddings")
        if limit and not hf_config.get("rope_scaling") and engine.max_model_len > limit:
            raise ConfigError(
                f"synthetic.engine.max_model_len={engine.max_model_len} exceeds the model's "
                f"max_position_embeddings={limit}"
            )
    kwargs = {
        "model": model,
        "dtype": dtype,
        "quantization": engine.quantization,
        "tensor_parallel_size": tensor_parallel_size(engine.tensor_parallel_size, config),
        "max_model_len": engine.max_model_len,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enforce_eager": engine.enforce_eager,
        "seed": config.synthetic.sampling.seed,
        # Compact JSON (no free whitespace between tokens): fewer tokens, and no runs of blank lines that
        # small models fall into; the few-shot answers are written the same way. xgrammar: the backend
        # that supports this and the schema's string-length bounds.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if engine.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(engine.kv_cache_gb * 2**30)
    return EngineSettings(kwargs)


def visible_devices(config: Config) -> tuple[int, str]:
    """What vLLM will be able to shard over, found without importing vLLM (the stage's first check)."""
    if resolve(config.runtime).is_cuda:
        # Lazy: config loading must not need torch.
        import torch

        return torch.cuda.device_count(), "CUDA device(s) visible (CUDA_VISIBLE_DEVICES)"
    # vLLM's CPU backend binds one tensor-parallel rank per NUMA node.
    nodes = [p for p in Path("/sys/devices/system/node").glob("node*") if p.name[4:].isdigit()]
    return max(len(nodes), 1), "NUMA node(s) (vLLM CPU backend)"


def tensor_parallel_size(wanted: int | str, config: Config) -> int:
    """synthetic.engine.tensor_parallel_size resolved ("auto": every visible device) and checked against them."""
    count, what = visible_devices(config)
    if wanted == "auto":
        return max(count, 1)
    if wanted > count:
        raise ConfigError(
            f"synthetic.engine.tensor_parallel_size={wanted} but only {count} {what} available "
            "(set it to at most that, or auto)"
        )
    return wanted


def available_devices() -> tuple[int, str]:
    """How many devices vLLM can shard over here, and what they are."""
    # Lazy: vLLM lives in the inference environment only and takes seconds to import.
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # The CPU backend binds one tensor-parallel rank per NUMA node.
        nodes = [p for p in Path("/sys/devices/system/node").glob("node*") if p.name[4:].isdigit()]
        return max(len(nodes), 1), "NUMA node(s) (vLLM CPU backend)"
    return int(current_platform.device_count()), f"{current_platform.device_type} device(s)"


def check_engine_devices(settings: EngineSettings) -> None:
    """The checks that need vLLM itself: quantization method and tensor parallelism vs devices."""
    # Lazy: vLLM lives in the inference environment only and takes seconds to import.
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    quantization = settings.kwargs["quantization"]
    if quantization is not None and quantization not in QUANTIZATION_METHODS:
        raise ConfigError(
            f"synthetic.engine.quantization={quantization!r} is not a vLLM quantization method; "
            f"known: {sorted(QUANTIZATION_METHODS)}"
        )
    tp = settings.kwargs["tensor_parallel_size"]
    count, what = available_devices()
    if tp > count:
        raise ConfigError(f"synthetic.engine.tensor_parallel_size={tp} but only {count} {what} available")


def start_engine(settings: EngineSettings):
    """``vllm.LLM`` with the checked settings; a failing start becomes one ConfigError naming the section."""
    check_engine_devices(settings)
    # Lazy: vLLM lives in the inference environment only and takes seconds to import.
    from vllm import LLM

    log.info("starting vLLM: %s", settings.kwargs)
    try:
        return LLM(**settings.kwargs)
    except Exception as err:  # vLLM raises many types (ValueError, RuntimeError from the engine process)
        raise ConfigError(
            f"synthetic.engine: vLLM could not start {settings.model!r} with {settings.kwargs}: "
            f"{type(err).__name__}: {err}"
        ) from err


def shutdown_engine(llm) -> None:
    """Stop the engine's worker processes now rather than at interpreter exit (frees the KV cache)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


# --------------------------------------------------------------------------- one batch of targets


@dataclass
class Candidate:
    target: TargetPrompt
    seed: int
    text: str
    fields: dict[str, str] | None = None
    reason: str | None = None
    judge_score: int | None = None

    @property
    def wrong_answer(self) -> str:
        return self.fields[f"Answer{self.fields['MisconceptionAnswer']}Text"]


@dataclass
class RunStats:
    generate_calls: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    judge_prompts: int = 0
    judge_s: float = 0.0
    engine_start_s: float = 0.0
    targets_generated: int = 0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["tokens_per_s"] = round(self.completion_tokens / self.generation_s, 2) if self.generation_s else None
        for key in ("generation_s", "judge_s", "engine_start_s"):
            out[key] = round(out[key], 2)
        return out


@dataclass
class Batch:
    """Everything one batch of targets produced."""

    rows: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)


def tokenize(tokenizer, text: str) -> list[int]:
    # The chat template already holds the special tokens the model expects.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_candidates(
    llm, tokenizer, targets: list[TargetPrompt], config: Config, stats: RunStats
) -> list[Candidate]:
    # Lazy: vLLM lives in the inference environment only and takes seconds to import.
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    syn = config.synthetic
    schema = output_schema(syn.question_chars, syn.answer_chars)
    # The seed goes to the engine (LLM(seed=...)), not to each request: vLLM 0.32's CPU worker crashes on
    # per-request generators when a long prompt's prefill is chunked ("CPU Generator does not use offset").
    params = SamplingParams(
        n=syn.sampling.n,
        temperature=syn.sampling.temperature,
        top_p=syn.sampling.top_p,
        max_tokens=syn.sampling.max_tokens,
        structured_outputs=StructuredOutputsParams(json=schema),
    )
    prompts = [TokensPrompt(prompt_token_ids=tokenize(tokenizer, t.prompt)) for t in targets]
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=bar_factory(desc="generation"))
    stats.generation_s += time.perf_counter() - t0
    stats.generate_calls += 1
    stats.prompts += len(prompts)
    candidates = []
    for target, output in zip(targets, outputs):
        stats.prompt_tokens += len(output.prompt_token_ids)
        for completion in output.outputs:
            stats.completion_tokens += len(completion.token_ids)
            candidates.append(Candidate(target, syn.sampling.seed, completion.text))
    return candidates


def judge(llm, tokenizer, candidates: list[Candidate], threshold: int, stats: RunStats) -> None:
    """Score valid candidates 1-5 with the same engine (greedy, one digit); reject those below threshold."""
    # Lazy: vLLM lives in the inference environment only and takes seconds to import.
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    todo = [c for c in candidates if c.reason is None]
    if not todo:
        return
    prompts = [
        TokensPrompt(
            prompt_token_ids=tokenize(
                tokenizer, render_chat(tokenizer, judge_messages(c.target.misconception_name, c.fields))
            )
        )
        for c in todo
    ]
    params = SamplingParams(
        temperature=0.0, max_tokens=4, structured_outputs=StructuredOutputsParams(choice=JUDGE_CHOICES)
    )
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=bar_factory(desc="judge"))
    stats.judge_s += time.perf_counter() - t0
    stats.generate_calls += 1
    stats.judge_prompts += len(prompts)
    for candidate, output in zip(todo, outputs):
        reply = output.outputs[0].text.strip()
        if reply not in JUDGE_CHOICES:
            candidate.reason = "judge_invalid"
            continue
        candidate.judge_score = int(reply)
        if candidate.judge_score < threshold:
            candidate.reason = "judge_below_threshold"
