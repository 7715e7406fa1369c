"""The memory arithmetic: weights, LoRA, optimizer state, activations, KV cache. Bytes throughout (GB = 1e9).

Every formula is an estimate with its assumptions stated here, not a measurement:

* Weights: every parameter at the dtype's width, except the quantized ``nn.Linear`` weights:
  bitsandbytes NF4 with double quantization (QLoRA) stores 4 bits + an 8-bit absmax per 64 weights + an fp32
  absmax per 256 blocks = 4.127 bits; W4A16 (GPTQ/AWQ, compressed-tensors or AutoAWQ) 4 bits + an fp16 scale
  per group (+ a 4-bit zero point per group when asymmetric). ``lm_head`` stays 16-bit in both (bitsandbytes
  keeps the output embedding; ``quantize.ignore`` lists it).
* Trainable state: LoRA adapters are fp32 (peft upcasts them) with an fp32 gradient and AdamW's two fp32
  moments: 16 bytes per adapter parameter. Full fine-tuning keeps the model's dtype: + a gradient and two
  AdamW moments of that width.
* Activations kept for backward, per token per decoder layer, 16-bit, with a fused attention kernel (SDPA /
  flash: no seq x seq score matrix): ``6 h + 2 kv + 4 I`` values (norm inputs and outputs, q/k/v, attention
  output, gate, up, act(gate), their product), plus one copy of each LoRA-targeted module's input for
  dropout. With gradient checkpointing: the input of every layer, plus one layer's full set while it is
  recomputed. A causal LM's training step adds its logits: 2 (16-bit) + 4 (fp32 upcast) + 4 (log-softmax)
  bytes per token per vocabulary entry.
* vLLM: the engine reserves ``gpu_memory_utilization`` of each GPU; inside it, the weights (split over
  tensor_parallel_size), a profiling pass of ``max(8192, max_model_len)`` tokens, ~1.5 GB of CUDA graphs and
  non-torch memory, and the KV cache (2 x layers x kv_heads x head_dim x 2 bytes per token, split over the
  GPUs) must hold at least one sequence of ``max_model_len``.
* Each torch stage adds ``CUDA_CONTEXT`` (the CUDA context and allocator slack).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from eedi.plan.arch import Arch

GB = 1e9
CUDA_CONTEXT = 0.6e9
VLLM_FIXED = 1.5e9  # CUDA graphs + non-torch memory (NCCL, cuBLAS workspaces)
VLLM_PROFILE_TOKENS = 8192  # vLLM's default max_num_batched_tokens on GPUs
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
LOGIT_BYTES = 2 + 4 + 4
LORA_STATE_BYTES = 4 + 4 + 8
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h)\.(\d+)\.")


def layer_of(module_name: str) -> int | None:
    found = _LAYER.search(module_name)
    return int(found.group(1)) if found else None


def is_head(module_name: str) -> bool:
    return module_name.split(".")[-1] in ("lm_head", "score", "classifier")


def w4a16_bits(group_size: int, asymmetric: bool) -> float:
    return 4 + 16 / group_size + (4 / group_size if asymmetric else 0)


def weight_bytes(
    arch: Arch, dtype_bytes: int, quant: str | None = None, group_size: int = 128, asymmetric: bool = False
) -> float:
    """Weights at ``dtype_bytes``, with the non-head ``nn.Linear`` weights at 4 bits when ``quant`` is
    ``nf4`` or ``w4a16``."""
    if quant is None:
        return arch.params * dtype_bytes
    bits = NF4_BITS if quant == "nf4" else w4a16_bits(group_size, asymmetric)
    quantized = sum(n for name, n in arch.linear_params.items() if not is_head(name))
    return (arch.params - quantized) * dtype_bytes + quantized * bits / 8


def lora_targets(arch: Arch, target_modules: Iterable[str], layers: Iterable[int] | None) -> list[str]:
    """The ``nn.Linear`` modules peft wraps: last name component in ``target_modules``, in ``layers`` if given."""
    targets, wanted = set(target_modules), None if layers is None else set(layers)
    return [
        name
        for name in arch.linear_shapes
        if name.split(".")[-1] in targets and (wanted is None or layer_of(name) in wanted) and not is_head(name)
    ]


def lora_params(arch: Arch, modules: list[str], r: int) -> int:
    """A and B of every wrapped module: r x (in + out) each."""
    return sum(r * (arch.linear_shapes[m][0] + arch.linear_shapes[m][1]) for m in modules)


def layer_params(arch: Arch, layers: Iterable[int]) -> int:
    """Linear weights of ``layers`` (full fine-tuning of the top layers: norms are noise beside them)."""
    wanted = set(layers)
    return sum(n for name, n in arch.linear_params.items() if layer_of(name) in wanted)


def activation_values_per_token_layer(arch: Arch) -> int:
    return 6 * arch.hidden + 2 * arch.kv_dim + 4 * arch.intermediate


def train_activation_bytes(
    arch: Arch,
    tokens: int,
    act_bytes: int,
    checkpointing: bool,
    lora_modules: list[str] = (),
    logits: bool = False,
    trained_layers: int | None = None,
) -> float:
    """Activations one training forward keeps for its backward (see the module docstring).

    ``trained_layers``: backpropagation stops below the lowest trained layer, so only those keep activations."""
    layers = arch.layers if trained_layers is None else trained_layers
    per_layer = activation_values_per_token_layer(arch)
    dropout = sum(arch.linear_shapes[m][0] for m in lora_modules)
    if checkpointing:
        values = layers * arch.hidden + per_layer + (dropout / max(layers, 1))
    else:
        values = layers * per_layer + dropout
    total = tokens * values * act_bytes
    if logits:
        total += tokens * arch.vocab * LOGIT_BYTES
    return total


def inference_activation_bytes(arch: Arch, tokens: int, act_bytes: int) -> float:
    """A no-grad forward holds about one layer's intermediates at a time."""
    return tokens * (4 * arch.hidden + 2 * arch.intermediate) * act_bytes


def kv_bytes_per_token(arch: Arch, kv_bytes: int = 2) -> float:
    return 2 * arch.layers * arch.kv_dim * kv_bytes


def vllm_overhead_bytes(arch: Arch, max_model_len: int, tp: int) -> float:
    tokens = max(VLLM_PROFILE_TOKENS, max_model_len)
    return VLLM_FIXED + tokens * (4 * arch.hidden + 2 * arch.intermediate / tp) * 2
