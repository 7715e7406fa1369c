"""Where and in what precision models run: one place that decides, every stage asks.

* device ``auto`` -> CUDA when available, else CPU.
* dtype ``auto`` -> bfloat16 on CUDA; float32 on CPU, because CPUs without AVX-512 emulate bf16
  matmuls, which makes them several times slower than float32 there.
* attention: SDPA everywhere (PyTorch picks its flash kernel on CUDA); ``flash_attention_2``
  when the package is installed on CUDA.
* 4-bit loading (QLoRA): bitsandbytes NF4. Meant for CUDA; bitsandbytes 0.50's CPU backend also
  runs it (tests/test_quantize.py), only slower than float32, so CPU configs leave it off.
* several processes (``torchrun``, launched by ``eedi run`` when ``runtime.nproc_per_node`` > 1): accelerate's
  ``PartialState`` owns the process group, the rank and the local rank (:func:`processes`); each process runs on
  its own ``cuda:<local_rank>`` (:func:`rank_device`), QLoRA's 4-bit weights included.
* vLLM's CPU engine: its OpenMP threads get every core of the affinity mask
  (:func:`configure_vllm_cpu_threads`, ``runtime.vllm_cpu_threads``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from datetime import timedelta

import torch

from eedi.config import RuntimeConfig
from eedi.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: torch.dtype
    attn_implementation: str

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def resolve(runtime: RuntimeConfig) -> Placement:
    device = runtime.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but torch sees no CUDA device (use runtime.device=auto or cpu)")
    if runtime.dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    else:
        dtype = getattr(torch, runtime.dtype)
    attn = "sdpa"
    if device == "cuda" and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
        attn = "flash_attention_2"
    if runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    return Placement(device, dtype, attn)


def rank_device(device: str, local_rank: int) -> str:
    """The device of the process with this local rank: ``cuda`` -> ``cuda:<local_rank>``; a CPU, or a device
    that already names its index, stays as it is."""
    if device == "cuda":
        return f"cuda:{local_rank}"
    return device


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes, as accelerate's ``PartialState`` sees it."""

    rank: int
    local_rank: int
    world_size: int
    placement: Placement

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def processes(placement: Placement, timeout_s: int = 1800) -> Processes:
    """Join the training processes (a no-op in a single process) and place this one on its own device.

    accelerate's ``PartialState`` reads the launcher's environment (torchrun, ``accelerate launch``, SLURM/MPI)
    and creates the process group: NCCL on CUDA, gloo on CPU, with ``timeout_s`` for every collective (the
    Trainer's ``ddp_timeout``; the Trainer's own ``PartialState`` later reuses this group). Called before the
    model is built, so that every rank loads onto its own GPU instead of ``cuda:0``."""
    from accelerate import PartialState  # training side only: config loading and the inference side never need it

    state = PartialState(cpu=not placement.is_cuda, timeout=timedelta(seconds=timeout_s))
    local_rank = int(state.local_process_index)
    device = rank_device(placement.device, local_rank) if state.num_processes > 1 else placement.device
    return Processes(
        rank=int(state.process_index),
        local_rank=local_rank,
        world_size=int(state.num_processes),
        placement=replace(placement, device=device),
    )


def barrier() -> None:
    """Wait for every training process (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def bnb_4bit_config(placement: Placement):
    """bitsandbytes NF4 config (double quantization, compute in the placement's dtype) for QLoRA.

    bitsandbytes 0.50 runs this on CPUs too: NF4 loading, the forward pass and LoRA gradients
    through the frozen 4-bit layers work (tests/test_quantize.py), but every matmul dequantizes
    its weights first, so on a CPU it saves memory, not time."""
    if not placement.is_cuda:
        log.warning("bitsandbytes 4-bit on CPU: it runs, but slower than float32; meant for CUDA")
    # Here, not at the top: every stage process imports this module, and transformers takes seconds to import.
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=placement.dtype,
    )


def model_kwargs(placement: Placement, load_in_4bit: bool = False) -> dict:
    """kwargs for ``from_pretrained`` of a backbone under this placement."""
    kwargs = {"dtype": placement.dtype, "attn_implementation": placement.attn_implementation}
    if load_in_4bit:
        kwargs["quantization_config"] = bnb_4bit_config(placement)
        # bitsandbytes quantizes while loading, onto the device named here: this process's own GPU
        # (cuda:<local rank> under DDP; plain "cuda" is the current device, 0 unless set otherwise)
        kwargs["device_map"] = {"": _device_index(placement.device) if placement.is_cuda else "cpu"}
    return kwargs


def _device_index(device: str) -> int:
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


VLLM_BIND = "VLLM_CPU_OMP_THREADS_BIND"
VLLM_RESERVED = "VLLM_CPU_NUM_OF_RESERVED_CPU"
_BIND_SET_BY_EEDI = "EEDI_SET_VLLM_CPU_OMP_THREADS_BIND"  # marks the value as ours, not the user's


def configure_vllm_cpu_threads(
    threads: int | None, device: str, tensor_parallel_size: int = 1, environ: MutableMapping[str, str] | None = None
) -> str | None:
    """Set VLLM_CPU_OMP_THREADS_BIND for the next ``vllm.LLM`` on CPU; returns the value set (None: left alone).

    Why: with the default ``VLLM_CPU_OMP_THREADS_BIND=auto`` vLLM 0.32 (vllm/utils/ompmultiprocessing.py,
    ``OMPProcessManager``) binds the worker's OpenMP threads to one logical CPU per physical core of the
    rank's NUMA node, then keeps ``local_world_size`` (1) of those cores back for the scheduler process:
    on a 2-core machine the model runs on 1 thread. An explicit list binds all of them. Must run before
    the engine starts (its processes read the variable when they spawn). Leaves alone: CUDA, a
    VLLM_CPU_OMP_THREADS_BIND or VLLM_CPU_NUM_OF_RESERVED_CPU set by the user, and tensor parallelism
    (auto binding then gives each rank its own NUMA node).
    """
    env = os.environ if environ is None else environ
    if device.startswith("cuda"):
        return None
    ours = env.get(_BIND_SET_BY_EEDI)
    if VLLM_RESERVED in env or (VLLM_BIND in env and env[VLLM_BIND] != ours):
        log.info(
            "vLLM CPU threads: leaving the environment's %s=%r, %s=%r",
            VLLM_BIND,
            env.get(VLLM_BIND),
            VLLM_RESERVED,
            env.get(VLLM_RESERVED),
        )
        return None
    if tensor_parallel_size > 1:
        log.info(
            "vLLM CPU threads: tensor_parallel_size=%d, leaving vLLM's per-NUMA-node auto binding", tensor_parallel_size
        )
        return None
    cores = sorted(os.sched_getaffinity(0))
    if threads is not None and threads > len(cores):
        log.warning(
            "runtime.vllm_cpu_threads=%d but this process may use %d core(s); using %d", threads, len(cores), len(cores)
        )
    value = ",".join(str(c) for c in cores[:threads])
    env[VLLM_BIND] = env[_BIND_SET_BY_EEDI] = value
    log.info(
        "vLLM CPU threads: set %s=%s (%d OpenMP threads; vLLM's auto binding keeps a core back)",
        VLLM_BIND,
        value,
        len(cores[:threads]),
    )
    return value
