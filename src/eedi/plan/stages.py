"""Per-stage memory plan of a config, compared with the GPUs given (``--gpus 8x80GB``) or visible.

Training stages run data-parallel (a full replica per GPU), so their per-GPU peak does not shrink with more
GPUs; vLLM engines shard over ``tensor_parallel_size`` GPUs.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from eedi.config import Config
from eedi.errors import ConfigError
from eedi.plan.arch import Arch, load_arch
from eedi.plan.memory import (
    CUDA_CONTEXT,
    DTYPE_BYTES,
    GB,
    inference_activation_bytes,
    kv_bytes_per_token,
    layer_of,
    layer_params,
    lora_params,
    lora_targets,
    train_activation_bytes,
    vllm_overhead_bytes,
    weight_bytes,
)

# Eedi's misconception_mapping.csv: the most documents one retriever step can embed
MISCONCEPTIONS = 2587
QUANTIZED_ORDER = ("gptq", "awq")  # infer.reranker_model=auto takes the first one the run has (submit/predict.py)


@dataclass(frozen=True)
class Gpus:
    count: int
    bytes_each: float
    source: str  # "--gpus 8x80GB" or "torch: 2 x NVIDIA T4"

    @property
    def label(self) -> str:
        return f"{self.count} x {self.bytes_each / GB:.1f} GB ({self.source})"


def parse_gpus(spec: str) -> Gpus:
    """``8x80GB``, ``2x16GB``, ``80GB``, ``1x24GiB`` -> count and bytes per GPU (GB = 1e9, GiB = 2**30)."""
    found = re.fullmatch(r"\s*(?:(\d+)\s*[x*]\s*)?(\d+(?:\.\d+)?)\s*(GB|GiB|G)?\s*", spec, flags=re.IGNORECASE)
    if not found or int(found.group(1) or 1) < 1 or float(found.group(2)) <= 0:
        raise ConfigError(f"--gpus {spec!r}: expected COUNTxSIZE, e.g. 8x80GB or 2x16GB")
    unit = 2**30 if (found.group(3) or "").lower() == "gib" else GB
    return Gpus(int(found.group(1) or 1), float(found.group(2)) * unit, f"--gpus {spec.strip()}")


def visible_gpus() -> Gpus | None:
    """What torch sees (the smallest GPU's memory), or None on a CPU-only machine.

    The sizes come from nvidia-smi when it is there: asking torch would create a CUDA context in this
    process (hundreds of MB on GPU 0), which `eedi run` would then hold while its stages run."""
    # Lazy: the plan's arithmetic needs no CUDA
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    count = torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES
    try:
        rows = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        gpus = [(name.strip(), float(mib) * 2**20) for name, mib in (r.rsplit(",", 1) for r in rows.splitlines())]
    except (OSError, subprocess.SubprocessError, ValueError):
        props = [torch.cuda.get_device_properties(i) for i in range(count)]
        gpus = [(p.name, float(p.total_memory)) for p in props]
    name, smallest = min(gpus, key=lambda g: g[1])
    return Gpus(count, smallest, f"visible: {count} x {name}")


@dataclass
class StagePlan:
    stage: str
    model: str
    arch_source: str
    params: int
    weights: float  # bytes, whole model at the stage's precision
    precision: str
    gpus_used: int = 1  # GPUs one copy of the model spans (vLLM tensor parallelism)
    lora_params: int = 0
    trainable_params: int = 0
    train_state: float = 0.0  # gradients + AdamW moments (+ fp32 adapter weights)
    act_ckpt: float | None = None  # activations with gradient checkpointing
    act_no_ckpt: float | None = None
    checkpointing: bool | None = None
    kv_cache: float | None = None  # vLLM: the KV cache of one max_model_len sequence (per GPU)
    kv_room: float | None = None  # vLLM: KV bytes left per GPU for the configured memory share
    peak: float = 0.0  # per GPU, what the stage needs
    reserve: float | None = None  # vLLM: what the engine takes (gpu_memory_utilization x GPU)
    fits: bool | None = None  # None: no GPU to compare with
    fix: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    config_name: str
    device: str
    dtype: str
    gpus: Gpus | None
    stages: list[StagePlan]

    @property
    def flagged(self) -> list[StagePlan]:
        return [s for s in self.stages if s.fits is False]


def _dtype(config: Config, device: str) -> str:
    if config.runtime.dtype != "auto":
        return config.runtime.dtype
    return "bfloat16" if device == "cuda" else "float32"


def _lora_layers(layers: int | None, arch: Arch) -> list[int] | None:
    return None if layers is None else list(range(max(0, arch.layers - layers), arch.layers))


def _compare(plan: StagePlan, gpus: Gpus | None, capacity: float | None, fix: str) -> None:
    if gpus is None:
        return
    if plan.gpus_used > gpus.count:
        plan.fits = False
        plan.fix = fix
        plan.notes.append(f"needs {plan.gpus_used} GPUs, {gpus.count} given")
        return
    plan.fits = plan.peak <= (capacity if capacity is not None else gpus.bytes_each)
    if not plan.fits:
        plan.fix = fix


def _train_fix(section: str, four_bit: bool, checkpointing: bool, extra: str) -> str:
    steps = []
    if not four_bit:
        steps.append(f"{section}.load_in_4bit=true")
    if not checkpointing:
        steps.append(f"{section}.gradient_checkpointing=true")
    steps.append(extra)
    steps.append(f"{section}.max_length")
    steps.append(f"{section}.backbone (a smaller model)")
    return ", then ".join(steps)


def plan_retriever_training(config: Config, dtype: str, gpus: Gpus | None) -> StagePlan:
    rc = config.retriever
    arch = load_arch(rc.backbone, "retriever.backbone", causal_lm=False)
    width = DTYPE_BYTES[dtype]
    weights = weight_bytes(arch, width, "nf4" if rc.load_in_4bit else None)
    top = _lora_layers(rc.top_layers, arch)
    modules = lora_targets(arch, rc.lora.target_modules, top) if rc.lora.enabled else []
    n_lora = lora_params(arch, modules, rc.lora.r)
    if rc.lora.enabled:
        trainable, state = n_lora, n_lora * 16.0
    else:
        trainable = layer_params(arch, top) if top is not None else arch.params
        state = trainable * 3.0 * width  # gradient + two AdamW moments in the model's dtype
    if rc.gradient_cache:
        sequences = rc.mini_batch_size
    else:
        docs = min(rc.batch_size * (1 + rc.n_hard_negatives + rc.n_random_negatives), MISCONCEPTIONS)
        sequences = rc.batch_size + docs
    tokens = sequences * rc.max_length
    kwargs = dict(lora_modules=modules, trained_layers=len(top) if top is not None else None)
    act_on = train_activation_bytes(arch, tokens, width, True, **kwargs)
    act_off = train_activation_bytes(arch, tokens, width, False, **kwargs)
    act = act_on if rc.gradient_checkpointing else act_off
    plan = StagePlan(
        stage="train-retriever",
        model=rc.backbone,
        arch_source=arch.source,
        params=arch.params,
        weights=weights,
        precision="nf4" if rc.load_in_4bit else dtype,
        lora_params=n_lora,
        trainable_params=trainable,
        train_state=state,
        act_ckpt=act_on,
        act_no_ckpt=act_off,
        checkpointing=rc.gradient_checkpointing,
        peak=weights + state + act + CUDA_CONTEXT,
    )
    plan.notes.append(
        f"{sequences} sequences x {rc.max_length} tokens per forward"
        + (" (GradCache mini-batch)" if rc.gradient_cache else " (whole batch: queries + documents, upper bound)")
    )
    extra = "retriever.mini_batch_size" if rc.gradient_cache else "retriever.gradient_cache=true"
    _compare(plan, gpus, None, _train_fix("retriever", rc.load_in_4bit, rc.gradient_checkpointing, extra))
    return plan


def plan_index(config: Config, dtype: str, gpus: Gpus | None) -> StagePlan:
    rc = config.retriever
    arch = load_arch(rc.backbone, "retriever.backbone", causal_lm=False)
    weights = weight_bytes(arch, DTYPE_BYTES[dtype])
    act = inference_activation_bytes(arch, rc.encode_batch_size * rc.max_length, DTYPE_BYTES[dtype])
    plan = StagePlan(
        stage="index",
        model=rc.backbone,
        arch_source=arch.source,
        params=arch.params,
        weights=weights,
        precision=dtype,
        act_no_ckpt=act,
        peak=weights + act + CUDA_CONTEXT,
    )
    plan.notes.append("the merged retriever, loaded in runtime.dtype")
    _compare(plan, gpus, None, "retriever.encode_batch_size, then retriever.backbone (a smaller model)")
    return plan


def plan_reranker_training(config: Config, dtype: str, gpus: Gpus | None) -> StagePlan:
    rc = config.reranker
    arch = load_arch(rc.backbone, "reranker.backbone", causal_lm=True)
    width = DTYPE_BYTES[dtype]
    weights = weight_bytes(arch, width, "nf4" if rc.load_in_4bit else None)
    layers = _lora_layers(rc.lora.layers, arch)
    modules = lora_targets(arch, rc.lora.target_modules, layers) if rc.lora.enabled else []
    n_lora = lora_params(arch, modules, rc.lora.r)
    trainable = n_lora if rc.lora.enabled else arch.params
    state = n_lora * 16.0 if rc.lora.enabled else arch.params * 3.0 * width
    tokens = rc.batch_size * rc.max_length
    trained = len(layers) if layers is not None else None
    act_on = train_activation_bytes(arch, tokens, width, True, modules, logits=True, trained_layers=trained)
    act_off = train_activation_bytes(arch, tokens, width, False, modules, logits=True, trained_layers=trained)
    act = act_on if rc.gradient_checkpointing else act_off
    plan = StagePlan(
        stage="train-reranker",
        model=rc.backbone,
        arch_source=arch.source,
        params=arch.params,
        weights=weights,
        precision="nf4" if rc.load_in_4bit else dtype,
        lora_params=n_lora,
        trainable_params=trainable,
        train_state=state,
        act_ckpt=act_on,
        act_no_ckpt=act_off,
        checkpointing=rc.gradient_checkpointing,
        peak=weights + state + act + CUDA_CONTEXT,
    )
    plan.notes.append(f"{rc.batch_size} windows x {rc.max_length} tokens per step, with their logits")
    plan.notes.append(
        f"the adapter merge reloads the base in {dtype} on the CPU: {weight_bytes(arch, width) / GB:.1f} GB of host RAM"
    )
    fix = _train_fix(
        "reranker", rc.load_in_4bit, rc.gradient_checkpointing, "reranker.batch_size (raise reranker.grad_accum)"
    )
    _compare(plan, gpus, None, fix)
    return plan


def plan_quantize(config: Config, dtype: str, gpus: Gpus | None) -> StagePlan:
    qc = config.quantize
    arch = load_arch(config.reranker.backbone, "reranker.backbone", causal_lm=True)
    width = DTYPE_BYTES[dtype]
    one_layer = {n: s for n, s in arch.linear_shapes.items() if layer_of(n) == 0}
    layer_weights = sum(i * o for i, o in one_layer.values()) * width
    hessians = sum(i * i * 4 for i, _ in one_layer.values()) if "gptq" in qc.methods else 0
    act = inference_activation_bytes(arch, qc.calibration.max_seq_length, width)
    plan = StagePlan(
        stage="quantize",
        model=config.reranker.backbone,
        arch_source=arch.source,
        params=arch.params,
        weights=layer_weights,
        precision=f"{dtype}, one layer on the GPU",
        act_no_ckpt=act,
        peak=layer_weights + hessians + act + CUDA_CONTEXT,
    )
    host = weight_bytes(arch, width) + qc.calibration.n_samples * qc.calibration.max_seq_length * arch.hidden * width
    plan.notes.append(
        f"llm-compressor's sequential pipeline: the model and the calibration activations stay in host RAM "
        f"({host / GB:.1f} GB); GPTQ Hessians {hessians / GB:.2f} GB"
    )
    _compare(plan, gpus, None, "quantize.calibration.max_seq_length")
    return plan


def plan_vllm(
    stage: str,
    model: str,
    key: str,
    arch: Arch,
    width: int,
    quant: tuple[int, bool] | None,
    tp: int,
    max_model_len: int,
    share: float,
    kv_cache_gb: float | None,
    gpus: Gpus | None,
    fix: str,
) -> StagePlan:
    """A vLLM engine: weights over ``tp`` GPUs, the profiling pass, and the KV cache in ``share`` of each GPU."""
    weights = weight_bytes(arch, width, "w4a16", *quant) if quant else weight_bytes(arch, width)
    per_gpu = weights / tp
    overhead = vllm_overhead_bytes(arch, max_model_len, tp)
    one_sequence = kv_bytes_per_token(arch) * max_model_len / tp
    kv_min = kv_cache_gb * 2**30 if kv_cache_gb is not None else one_sequence
    plan = StagePlan(
        stage=stage,
        model=model,
        arch_source=arch.source,
        params=arch.params,
        weights=weights,
        precision=f"W4A16 g{quant[0]}" if quant else {4: "float32", 2: "16-bit"}[width],
        gpus_used=tp,
        kv_cache=one_sequence,
        peak=per_gpu + overhead + kv_min,
    )
    plan.notes.append(
        f"KV cache {kv_bytes_per_token(arch) / tp / 1e6:.3f} MB per token per GPU; "
        f"{max_model_len} tokens: {one_sequence / GB:.2f} GB"
    )
    if gpus is not None:
        plan.reserve = share * gpus.bytes_each
        plan.kv_room = plan.reserve - per_gpu - overhead
        if plan.kv_room > 0:
            plan.notes.append(
                f"{key.rsplit('.', 1)[0]}: {share:.2f} x GPU = {plan.reserve / GB:.1f} GB reserved; KV room "
                f"{plan.kv_room / GB:.1f} GB = {int(plan.kv_room // one_sequence)} sequences of {max_model_len}"
            )
        _compare(plan, gpus, plan.reserve, fix)
    return plan


def _checkpoint_quant(arch: Arch) -> tuple[int, bool] | None:
    q = arch.quantization
    if not q or int(q.get("bits", q.get("w_bit", 16))) != 4:
        return None
    return int(q.get("group_size", q.get("q_group_size", 128))), bool(q.get("zero_point", not q.get("sym", True)))


def plan_synthesis(config: Config, dtype: str, gpus: Gpus | None) -> StagePlan:
    engine = config.synthetic.engine
    arch = load_arch(engine.model, "synthetic.engine.model", causal_lm=True)
    engine_dtype = dtype if engine.dtype == "auto" else engine.dtype
    quant = _checkpoint_quant(arch)
    if quant is None and engine.quantization and ("awq" in engine.quantization or "gptq" in engine.quantization):
        quant = (128, "awq" in engine.quantization)
    tp = engine.tensor_parallel_size
    if tp == "auto":
        tp = gpus.count if gpus is not None else 1
    fix = (
        "synthetic.engine.tensor_parallel_size (or auto), then synthetic.engine.model (a 4-bit AWQ/GPTQ "
        "checkpoint), synthetic.engine.max_model_len, synthetic.engine.gpu_memory_utilization"
    )
    return plan_vllm(
        "synthesize",
        engine.model,
        "synthetic.engine.gpu_memory_utilization",
        arch,
        DTYPE_BYTES[engine_dtype],
        quant,
        tp,
        engine.max_model_len,
        engine.gpu_memory_utilization,
        engine.kv_cache_gb,
        gpus,
        fix,
    )


def served_reranker(config: Config, device: str) -> str:
    """Which reranker weights infer serves, as :func:`eedi.submit.predict.choose_reranker` picks them."""
    wanted = config.infer.reranker_model
    if wanted != "auto":
        return wanted
    quantized_ok = config.infer.backend == "transformers" or device == "cuda"
    made = list(config.quantize.methods) if config.quantize.enabled else []
    return next((m for m in QUANTIZED_ORDER if m in made and quantized_ok), "merged")


def plan_infer_reranker(config: Config, dtype: str, device: str, gpus: Gpus | None, stage: str) -> StagePlan:
    rc, ic = config.reranker, config.infer
    arch = load_arch(rc.backbone, "reranker.backbone", causal_lm=True)
    served = served_reranker(config, device)
    quant = (config.quantize.group_size, config.quantize.scheme.endswith("ASYM")) if served != "merged" else None
    if ic.backend == "vllm":
        fix = (
            "infer.reranker_model=awq|gptq (quantize.enabled=true), then reranker.tensor_parallel_size, "
            "infer.vllm_gpu_memory_utilization, reranker.max_length"
        )
        plan = plan_vllm(
            stage,
            f"{rc.backbone} ({served})",
            "infer.vllm_gpu_memory_utilization",
            arch,
            DTYPE_BYTES[dtype],
            quant,
            rc.tensor_parallel_size,
            rc.max_length + 1,
            ic.vllm_gpu_memory_utilization,
            None,
            gpus,
            fix,
        )
        return plan
    # transformers decompresses W4A16 checkpoints on load: the served weights are full width
    weights = weight_bytes(arch, DTYPE_BYTES[dtype])
    act = inference_activation_bytes(arch, rc.score_batch_size * rc.max_length, DTYPE_BYTES[dtype])
    plan = StagePlan(
        stage=stage,
        model=f"{rc.backbone} ({served}, transformers)",
        arch_source=arch.source,
        params=arch.params,
        weights=weights,
        precision=dtype,
        act_no_ckpt=act,
        peak=weights + act + CUDA_CONTEXT,
    )
    _compare(plan, gpus, None, "infer.backend=vllm with infer.reranker_model=awq|gptq, then reranker.score_batch_size")
    return plan


def plan_predict_retriever(config: Config, dtype: str, device: str, gpus: Gpus | None) -> StagePlan:
    rc = config.retriever
    arch = load_arch(rc.backbone, "retriever.backbone", causal_lm=False)
    four_bit = rc.load_in_4bit  # submit/predict.py loads it in NF4 then (bitsandbytes runs on CPUs too)
    weights = weight_bytes(arch, DTYPE_BYTES[dtype], "nf4" if four_bit else None)
    act = inference_activation_bytes(arch, rc.encode_batch_size * rc.max_length, DTYPE_BYTES[dtype])
    plan = StagePlan(
        stage="predict: retriever",
        model=rc.backbone,
        arch_source=arch.source,
        params=arch.params,
        weights=weights,
        precision="nf4" if four_bit else dtype,
        act_no_ckpt=act,
        peak=weights + act + CUDA_CONTEXT,
    )
    plan.notes.append("the Kaggle notebook's first phase; freed before the reranker engine starts")
    _compare(plan, gpus, None, "retriever.load_in_4bit=true, then retriever.encode_batch_size, retriever.backbone")
    return plan


def plan_config(config: Config, gpus: Gpus | None, name: str = "", only: list[str] | None = None) -> Plan:
    """Every GPU stage of ``config``: what it needs per GPU, and whether ``gpus`` hold it.

    ``only``: stage names or prefixes to keep ("predict": both phases of the Kaggle notebook)."""
    device = config.runtime.device
    if device == "auto":
        device = "cuda" if gpus is not None else "cpu"
    dtype = _dtype(config, device)
    stages: list[StagePlan] = []
    if config.synthetic.enabled:
        stages.append(plan_synthesis(config, dtype, gpus))
    stages.append(plan_retriever_training(config, dtype, gpus))
    stages.append(plan_index(config, dtype, gpus))
    # reranker.kind=features or pointwise: a LightGBM model or a MiniLM-sized cross-encoder on CPU; the plan is
    # about the language models.
    language_reranker = config.reranker.enabled and config.reranker.kind == "listwise"
    if language_reranker:
        stages.append(plan_reranker_training(config, dtype, gpus))
        if config.quantize.enabled:
            stages.append(plan_quantize(config, dtype, gpus))
        stages.append(plan_infer_reranker(config, dtype, device, gpus, "infer"))
    stages.append(plan_predict_retriever(config, dtype, device, gpus))
    if language_reranker:
        stages.append(plan_infer_reranker(config, dtype, device, gpus, "predict: reranker"))
    if only:
        kept = [s for s in stages if any(s.stage.startswith(p.strip()) for p in only)]
        if not kept:
            raise ConfigError(f"--stages {','.join(only)}: none of {[s.stage for s in stages]}")
        stages = kept
    return Plan(name, device, dtype, gpus, stages)
