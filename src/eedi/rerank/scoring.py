"""Label probabilities for listwise reranker prompts: one interface, two backends.

A reranker prompt ends where the model writes the label (``A``, ``B``, ...) of the right
candidate. Its score for a window of ``n`` candidates is the model's next-token
log-probabilities of the ``n`` label tokens at that position, renormalised over those ``n``
labels (a softmax over the label log-probs):

* ``transformers`` (CPU and CUDA): one forward pass per batch of left-padded prompts, keeping
  only the last position's logits (``logits_to_keep=1``).
* ``vllm``: one generated token per prompt with ``SamplingParams(logprob_token_ids=labels)``,
  which returns the *raw* (unrestricted, before any sampling processor) log-probabilities of
  exactly those tokens. ``allowed_token_ids`` would restrict the sampled token but vLLM
  computes returned log-probs before that mask, and top-``k`` log-probs would miss labels that
  are not among the ``k`` most likely tokens.

Both backends get the same token ids (tokenised here, left-truncated to ``max_length``), so
they score exactly the same input; tests/test_reranker.py checks they agree.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eedi.config import Config
from eedi.errors import EnvironmentMissing
from eedi.progress import bar, bar_factory
from eedi.runtime import Placement, configure_vllm_cpu_threads, model_kwargs, resolve

log = logging.getLogger(__name__)

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class LabelTokenError(ValueError):
    """A candidate label is not a single token of the reranker's tokenizer."""


def label_token_ids(tokenizer, n: int, labels: Sequence[str] = LABELS) -> list[int]:
    """Token ids of the first ``n`` labels, each required to be exactly one token that decodes back to itself.

    The label is generated right after the chat template's assistant header, so it is encoded
    on its own (no leading space). Raises :class:`LabelTokenError` naming the offending label.
    """
    if not 1 <= n <= len(labels):
        raise LabelTokenError(f"need 1 <= n <= {len(labels)} labels, got n={n}")
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    ids = []
    for label in labels[:n]:
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            raise LabelTokenError(
                f"label {label!r} is {len(encoded)} tokens {encoded} in tokenizer {name!r}; "
                f"every label must be a single token"
            )
        if tokenizer.decode(encoded).strip() != label:
            raise LabelTokenError(
                f"label {label!r} encodes to token {encoded[0]} which decodes to "
                f"{tokenizer.decode(encoded)!r} in tokenizer {name!r} (unknown token?)"
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise LabelTokenError(f"labels {list(labels[:n])} map to repeated token ids {ids} in tokenizer {name!r}")
    return ids


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of chat-formatted prompts (special tokens come from the template, none are added).

    Over-long prompts keep their *last* ``max_length`` tokens: the candidates and the answer
    slot are at the end, and training truncates the same way.
    """
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    too_long = sum(len(ids) > max_length for ids in encoded)
    if too_long:
        log.warning(
            "%d of %d prompts exceed max_length=%d tokens and were cut from the left",
            too_long,
            len(encoded),
            max_length,
        )
    return [ids[-max_length:] for ids in encoded]


def normalise(label_logprobs: np.ndarray) -> np.ndarray:
    """Softmax over the label axis: probabilities restricted to the window's labels (rows sum to 1)."""
    shifted = label_logprobs - label_logprobs.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class LabelScorer(Protocol):
    tokenizer: object

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]], label_ids: Sequence[int]) -> np.ndarray:
        """(len(prompt_ids), len(label_ids)) raw next-token log-probabilities of the label tokens."""

    def close(self) -> None:
        """Free the model (GPU memory before the next fold trains)."""


class TransformersScorer:
    """Batched forward passes of a Hugging Face causal LM (CPU or CUDA)."""

    def __init__(self, model_path: str | Path, placement: Placement, batch_size: int = 16):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        kwargs = model_kwargs(placement)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).to(placement.device).eval()
        self.device = placement.device
        self.batch_size = batch_size
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # masked out: any id will do
        self._torch = torch

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]], label_ids: Sequence[int]) -> np.ndarray:
        torch = self._torch
        out = np.empty((len(prompt_ids), len(label_ids)), dtype=np.float64)
        # Batches of similar length waste little compute on padding.
        order = np.argsort([len(ids) for ids in prompt_ids], kind="stable")
        labels = torch.tensor(list(label_ids), device=self.device)
        starts = range(0, len(order), self.batch_size)
        for start in bar(starts, desc="reranker windows", unit="batch", disable=len(starts) < 2):
            idx = order[start : start + self.batch_size]
            # Left padding: every prompt ends at the last position, whose logits give the label's probability.
            batch = self.tokenizer.pad(
                {"input_ids": [list(prompt_ids[i]) for i in idx]}, padding_side="left", return_tensors="pt"
            )
            mask = batch["attention_mask"]
            # A plain forward pass numbers positions 0..width-1 whatever the mask: count real tokens only, as if
            # each prompt were alone (as vLLM sees it).
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                    logits_to_keep=1,
                ).logits[:, -1, :]
                logprobs = torch.log_softmax(logits.float(), dim=-1)[:, labels]
            out[idx] = logprobs.cpu().double().numpy()
        return out

    def close(self) -> None:
        del self.model
        gc.collect()
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


def vllm_engine_kwargs(model_path: str | Path, placement: Placement, config: Config) -> dict:
    """``vllm.LLM(**kwargs)`` of the reranker engine (no vLLM import: testable on the training side)."""
    return {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": str(placement.dtype).removeprefix("torch."),
        # CUDA graphs pay off on GPUs; the CPU build runs eagerly
        "enforce_eager": not placement.is_cuda,
        "max_model_len": config.reranker.max_length + 1,
        "tensor_parallel_size": config.reranker.tensor_parallel_size,
        "seed": config.seed,
        # vLLM's share of each GPU; the CPU build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead
        "gpu_memory_utilization": config.infer.vllm_gpu_memory_utilization,
    }


class VLLMScorer:
    """vLLM engine returning the raw log-probabilities of the label tokens for one generated token."""

    def __init__(self, engine_kwargs: dict, placement: Placement, cpu_threads: int | None = None):
        """``engine_kwargs``: :func:`vllm_engine_kwargs`."""
        # Lazy: vLLM lives in the inference environment only and takes seconds to import.
        from vllm import LLM

        configure_vllm_cpu_threads(cpu_threads, placement.device, engine_kwargs["tensor_parallel_size"])
        self.tokenizer = AutoTokenizer.from_pretrained(engine_kwargs["tokenizer"])
        self.llm = LLM(**engine_kwargs)

    def label_logprobs(self, prompt_ids: Sequence[Sequence[int]], label_ids: Sequence[int]) -> np.ndarray:
        # Lazy: vLLM lives in the inference environment only and takes seconds to import.
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(label_ids))
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids],
            params,
            use_tqdm=bar_factory(desc="reranker windows") if len(prompt_ids) > 1 else False,
        )
        out = np.empty((len(prompt_ids), len(label_ids)), dtype=np.float64)
        for row, output in enumerate(outputs):
            position = output.outputs[0].logprobs[0]
            out[row] = [position[token].logprob for token in label_ids]
        return out

    def close(self) -> None:
        # Stops the engine-core process now rather than at interpreter exit, releasing its GPU memory.
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def make_scorer(model_path: str | Path, backend: str, config: Config) -> LabelScorer:
    """The scoring engine for ``backend`` ("transformers" | "vllm"), built once and reused for every window."""
    placement = resolve(config.runtime)
    if backend == "transformers":
        return TransformersScorer(model_path, placement, config.reranker.score_batch_size)
    if backend == "vllm":
        try:
            # Lazy: vLLM lives in the inference environment only and takes seconds to import.
            import vllm  # noqa: F401
        except ImportError:
            raise EnvironmentMissing(
                "reranker backend 'vllm' needs vLLM, which lives in the inference environment "
                "(.venv-infer); use backend=transformers on the training side"
            ) from None
        return VLLMScorer(vllm_engine_kwargs(model_path, placement, config), placement, config.runtime.vllm_cpu_threads)
    raise ValueError(f"unknown reranker backend {backend!r}; expected 'transformers' or 'vllm'")


def score_with(scorer: LabelScorer, prompts: Sequence[str], sizes: Sequence[int], max_length: int) -> list[np.ndarray]:
    """Probabilities of each prompt's own ``sizes[i]`` labels (a window can hold fewer than window_size)."""
    if len(prompts) != len(sizes):
        raise ValueError(f"{len(prompts)} prompts but {len(sizes)} window sizes")
    if not prompts:
        return []
    label_ids = label_token_ids(scorer.tokenizer, max(sizes))
    raw = scorer.label_logprobs(encode_prompts(scorer.tokenizer, prompts, max_length), label_ids)
    return [normalise(row[:n]) for row, n in zip(raw, sizes)]
