#!/usr/bin/env python
"""Every stage's CUDA path on a GPU machine, one command: the first thing a session with a lent GPU runs.

    python benchmarks/cuda_check.py [--out benchmarks/results/cuda_check.json] [--models models]
                                    [--only retriever_1gpu,plan_vs_measured] [--timeout-scale 1.5]

No model hub is needed: the backbone is a randomly initialised Qwen2 (hidden 256, 4 layers; the real module names
q_proj ... down_proj) with SmolLM2's tokenizer from ``--models`` (``eedi setup-models``), and the data is the bundled
sample. The pipeline runs configs/qwen2.5-14b.yaml with that model swapped in (bf16, SDPA, LoRA, QLoRA, GradCache,
vLLM), so the checks exercise the code paths, not the quality of a real Qwen2.5. The checks, in order:

  synthesize_vllm    the synthesize stage on vLLM (infer side)
  retriever_1gpu     train-retriever on one GPU (bf16 + LoRA + GradCache + gradient checkpointing)
  retriever_ngpu     train-retriever under torchrun on every visible GPU (skipped with fewer than 2)
  index_faiss_gpu    the index stage with index.use_gpu=true (faiss-gpu)
  reranker_qlora     train-reranker with bitsandbytes NF4 (QLoRA)
  quantize           GPTQ and AWQ W4A16 with llm-compressor
  vllm_gptq          vLLM loading the GPTQ reranker and scoring windows (infer side)
  vllm_awq           the same for AWQ
  infer              the infer stage with the vLLM backend (infer side)
  plan_vs_measured   `eedi plan` for the same config beside the peaks the checks above measured

Each check runs in its own process under its own timeout (``TIMEOUTS``, about 8 minutes in all on an H100), so
one that fails, hangs or runs out of memory is recorded and the others still run. A check whose package is
missing (vllm, bitsandbytes, faiss-gpu, llm-compressor) is skipped with the reason; without CUDA every check is
skipped. Train-side checks run in ``EEDI_TRAIN_PYTHON`` (else this interpreter), infer-side ones in
``EEDI_INFER_PYTHON`` (else this interpreter). GPU peaks: the torch allocator's for in-process work, and the
device's used memory sampled every 0.1 s for vLLM (whose engine runs in another process).
Writes one JSON: machine, versions, and per check its status (ok / failed / timeout / skipped), seconds,
measured peak and reason or error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "qwen2.5-14b.yaml"

# name -> (side, timeout in seconds). Sized for the tiny model on one H100: 8 minutes if every check runs to its
# limit (each vLLM engine start is most of its check; vllm_awq reuses vllm_gptq's compile cache).
# --timeout-scale stretches them on a slower GPU.
TIMEOUTS = {
    "synthesize_vllm": ("infer", 70),
    "retriever_1gpu": ("train", 40),
    "retriever_ngpu": ("train", 50),
    "index_faiss_gpu": ("train", 25),
    "reranker_qlora": ("train", 50),
    "quantize": ("train", 55),
    "vllm_gptq": ("infer", 60),
    "vllm_awq": ("infer", 50),
    "infer": ("infer", 60),
    "plan_vs_measured": ("train", 20),
}
# which plan row each check's measured peak is compared with
PLAN_ROWS = {
    "synthesize_vllm": "synthesize",
    "retriever_1gpu": "train-retriever",
    "index_faiss_gpu": "index",
    "reranker_qlora": "train-reranker",
    "quantize": "quantize",
    "vllm_gptq": "infer",
    "infer": "infer",
}


class Skip(Exception):
    """The check cannot run here (a package or a second GPU is missing): recorded as skipped, not failed."""


# --------------------------------------------------------------------------- the parent


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "peft", "sentence_transformers", "accelerate", "bitsandbytes", "faiss"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # noqa: BLE001 - a broken package is recorded, not raised
            out[name] = f"unavailable: {type(err).__name__}: {str(err)[:120]}"
    return out


def cuda_state() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, "CUDA is not available (torch.cuda.is_available() is False): nothing here can run"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return True, f"{len(names)} x {names[0]}"


def side_python(side: str) -> str:
    return os.environ.get(f"EEDI_{side.upper()}_PYTHON") or sys.executable


def run_child(name: str, args: argparse.Namespace, work: Path) -> dict:
    """One check in its own process group (so a hung vLLM engine dies with it) under its timeout."""
    side, limit = TIMEOUTS[name]
    limit = limit * args.timeout_scale
    result_file = work / "results" / f"{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [side_python(side), str(Path(__file__).resolve()), "--one", name, "--work", str(work)]
    cmd += ["--models", str(args.models)]
    log_path = work / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "timeout", "seconds": round(time.perf_counter() - t0, 1), "timeout_s": limit}
    if result_file.exists():
        record = json.loads(result_file.read_text())
    else:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        record = {"status": "failed", "error": f"exit {code}, no result; log tail:\n" + "\n".join(tail)}
    record.setdefault("seconds", round(time.perf_counter() - t0, 1))
    record["log"] = str(log_path)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cuda_check.json"))
    parser.add_argument("--models", default=str(REPO / "models"), help="folder of `eedi setup-models`")
    parser.add_argument("--work", default="/tmp/eedi-cuda-check", help="scratch folder: tiny model, run dirs, logs")
    parser.add_argument("--only", help="comma-separated subset of the checks")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every check's timeout")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one check in this process
    args = parser.parse_args()
    work = Path(args.work)
    if args.one:
        return run_one(args.one, work, Path(args.models))

    wanted = args.only.split(",") if args.only else list(TIMEOUTS)
    unknown = sorted(set(wanted) - set(TIMEOUTS))
    if unknown:
        parser.error(f"--only: unknown checks {unknown}; checks: {list(TIMEOUTS)}")
    started = time.time()
    has_cuda, device = cuda_state()
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "device": device,
        "versions": versions(),
        "checks": {},
    }
    for name in wanted:
        if not has_cuda:
            record = {"status": "skipped", "reason": device}
        else:
            (work / "results").mkdir(parents=True, exist_ok=True)
            if name == "plan_vs_measured":
                (work / "results" / "measured.json").write_text(json.dumps(report["checks"]))
            record = run_child(name, args, work)
        report["checks"][name] = record
        print(f"{name:<18} {record['status']:<8} {record.get('reason') or record.get('error') or ''}"[:300], flush=True)
    report["wall_seconds"] = round(time.time() - started)
    report["counts"] = {
        s: sum(r["status"] == s for r in report["checks"].values()) for s in ("ok", "failed", "timeout", "skipped")
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}: {report['counts']}")
    return 0 if report["counts"]["failed"] + report["counts"]["timeout"] == 0 else 1


# --------------------------------------------------------------------------- one check, in its own process


class DevicePeak:
    """The device's used memory (all processes: vLLM's engine core too), sampled, minus what was used at start."""

    def __init__(self):
        import torch

        self.torch = torch
        self.base = self.used()
        self.peak = self.base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def used(self) -> int:
        total = 0
        for d in range(self.torch.cuda.device_count()):
            free, size = self.torch.cuda.mem_get_info(d)
            total = max(total, size - free)
        return total

    def _poll(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, self.used())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    @property
    def gb(self) -> float:
        return round((self.peak - self.base) / 1e9, 3)


def tiny_overrides(work: Path, models: Path, model: Path, run: str = "run") -> list[str]:
    import importlib.util

    four_bit = str(importlib.util.find_spec("bitsandbytes") is not None).lower()
    return [
        f"data.dir={REPO / 'data' / 'sample'}",
        f"run_dir={work / run}",
        "folds.use=[0]",
        "folds.full_fit=false",
        "synthetic.enabled=false",
        "synthetic.use=false",
        f"synthetic.embedder={models / 'all-minilm-l6-v2'}",
        f"retriever.backbone={model}",
        "retriever.max_steps=4",
        "retriever.batch_size=8",
        "retriever.mini_batch_size=4",
        "retriever.n_random_negatives=8",
        "retriever.hard_negative_refresh_steps=2",
        "retriever.encode_batch_size=32",
        f"reranker.backbone={model}",
        f"reranker.load_in_4bit={four_bit}",
        "reranker.max_train_windows=32",
        "reranker.batch_size=2",
        "reranker.grad_accum=1",
        "reranker.max_length=256",
        # validation scoring runs on the training side, which has no vLLM; vLLM scoring is checked by vllm_* and infer
        "reranker.backend=transformers",
        "quantize.calibration.n_samples=16",
        "quantize.calibration.max_seq_length=256",
        "quantize.eval_max_pairs=16",
        "infer.reranker_model=gptq",
        "infer.backend=vllm",
        "infer.vllm_gpu_memory_utilization=0.3",
    ]


def tiny_model(work: Path, models: Path) -> Path:
    from eedi.pretrained import build_tiny_qwen2

    dest = work / "qwen2-tiny"
    if (dest / "config.json").exists():
        return dest
    tokenizer = models / "smollm2-135m-instruct"
    if not (tokenizer / "tokenizer.json").exists():
        raise Skip(f"no SmolLM2 tokenizer in {tokenizer}: run `eedi setup-models --out {models}`")
    return build_tiny_qwen2(dest, tokenizer, hidden_size=256, layers=4, heads=4, kv_heads=2)


def config(work: Path, models: Path, *extra: str, run: str = "run"):
    from eedi.config import load_config

    return load_config(CONFIG, [*tiny_overrides(work, models, tiny_model(work, models), run), *extra])


def need(module: str, why: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - ImportError, or a package that fails to import here
        raise Skip(f"{module} not usable in {sys.executable} ({type(err).__name__}: {str(err)[:160]}): {why}") from None


def stages(cfg, *names: str, force_last: bool = True) -> dict:
    """Run stages in this process (earlier ones are skipped when current); the allocator's peak of the last."""
    import torch

    from eedi.pipeline.runner import run_stage

    for name in names[:-1]:
        run_stage(cfg, name)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = run_stage(cfg, names[-1], force=force_last)
    return {
        "stage_seconds": round(time.perf_counter() - t0, 1),
        "peak_gb": round(max(torch.cuda.max_memory_reserved(d) for d in range(torch.cuda.device_count())) / 1e9, 3),
        "summary": summary,
    }


def check_synthesize_vllm(work: Path, models: Path) -> dict:
    need("vllm", "synthesis generates with vLLM (the infer side: .venv-infer / Dockerfile.infer)")
    cfg = config(
        work,
        models,
        "synthetic.enabled=true",
        "synthetic.budget=4",
        "synthetic.few_shot=2",
        "synthetic.sampling.n=1",
        "synthetic.sampling.max_tokens=64",
        "synthetic.judge.enabled=false",
        f"synthetic.engine.model={tiny_model(work, models)}",
        "synthetic.engine.quantization=null",
        "synthetic.engine.dtype=auto",
        "synthetic.engine.tensor_parallel_size=1",
        "synthetic.engine.max_model_len=2048",
        "synthetic.engine.gpu_memory_utilization=0.3",
        "synthetic.engine.enforce_eager=true",
        run="run-synth",
    )
    from eedi.pipeline.runner import run_stage
    from eedi.synthesis.stage import synthesize

    run_stage(cfg, "prepare")
    with DevicePeak() as peak:
        summary = synthesize(cfg)
    return {"peak_gb": peak.gb, "summary": {k: summary.get(k) for k in ("rows", "rejected", "this_run")}}


def check_retriever_1gpu(work: Path, models: Path) -> dict:
    return stages(config(work, models), "prepare", "train-retriever")


def check_retriever_ngpu(work: Path, models: Path) -> dict:
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        raise Skip(f"{n} GPU visible: data-parallel training needs 2 or more")
    cfg = config(work, models, run="run-ddp")
    from eedi.pipeline.runner import run_stage

    run_stage(cfg, "prepare")
    overrides = [*tiny_overrides(work, models, tiny_model(work, models), "run-ddp"), "--force"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
    cmd += [str(REPO / "scripts" / "02_train_retriever.py"), "--config", str(CONFIG), *overrides]
    with DevicePeak() as peak:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exit {done.returncode}: {done.stderr[-1500:]}")
    return {"gpus": n, "peak_gb_any_device": peak.gb}


def check_index_faiss_gpu(work: Path, models: Path) -> dict:
    need("faiss", "the index stage searches with FAISS")
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise Skip("faiss has no GPU support here (the [cuda] extra: faiss-gpu-cu12)")
    return stages(config(work, models, "index.use_gpu=true"), "prepare", "train-retriever", "index")


def check_reranker_qlora(work: Path, models: Path) -> dict:
    need("bitsandbytes", "QLoRA loads the reranker in NF4")
    return stages(config(work, models), "prepare", "train-retriever", "index", "train-reranker")


def check_quantize(work: Path, models: Path) -> dict:
    need("llmcompressor", "GPTQ/AWQ (the [train] extra)")
    out = stages(config(work, models), "prepare", "train-retriever", "index", "train-reranker", "quantize")
    from eedi.layout import RunLayout
    from eedi.quantize.methods import weights_bytes

    layout = RunLayout(work / "run")
    out["checkpoint_bytes"] = {
        m: weights_bytes(layout.quantized_model(m)) for m in ("gptq", "awq") if layout.quantized_model(m).is_dir()
    }
    return out


def check_vllm(work: Path, models: Path, method: str) -> dict:
    need("vllm", "the inference side serves the quantized rerankers with vLLM")
    import numpy as np

    from eedi.layout import RunLayout
    from eedi.rerank.scoring import make_scorer, score_with

    path = RunLayout(work / "run").quantized_model(method)
    if not (path / "config.json").exists():
        raise RuntimeError(f"no {method} checkpoint in {path}: the quantize check did not produce it")
    cfg = config(work, models)
    prompts = [f"Question {i}: which misconception, A, B, C, D or E? Answer:" for i in range(8)]
    with DevicePeak() as peak:
        t0 = time.perf_counter()
        scorer = make_scorer(path, "vllm", cfg)
        start = time.perf_counter() - t0
        probs = score_with(scorer, prompts, [5] * len(prompts), cfg.reranker.max_length)
        scorer.close()
    sums = [float(np.sum(p)) for p in probs]
    if not all(abs(s - 1) < 1e-3 for s in sums):
        raise RuntimeError(f"label probabilities do not sum to 1: {sums}")
    return {"peak_gb": peak.gb, "engine_start_s": round(start, 1), "windows": len(prompts)}


def check_infer(work: Path, models: Path) -> dict:
    need("vllm", "infer serves the reranker with vLLM")
    from eedi.manifest import Manifest
    from eedi.pipeline.runner import run_stage

    cfg = config(work, models)
    manifest = Manifest(work / "run")
    if manifest.stage("index").get("status") != "done" or manifest.stage("quantize").get("status") != "done":
        raise RuntimeError("needs the index and the GPTQ reranker of the reranker_qlora and quantize checks")
    with DevicePeak() as peak:
        summary = run_stage(cfg, "infer", force=True)
    return {"peak_gb": peak.gb, "summary": summary}


def check_plan_vs_measured(work: Path, models: Path) -> dict:
    from eedi.plan import plan_config, visible_gpus

    measured = json.loads((work / "results" / "measured.json").read_text())
    plan = {s.stage: s for s in plan_config(config(work, models), visible_gpus()).stages}
    rows = {}
    for check, stage in PLAN_ROWS.items():
        got = measured.get(check, {})
        planned = plan[stage].peak / 1e9 if stage in plan else None
        peak = got.get("peak_gb") if got.get("status") == "ok" else None
        reserve = plan[stage].reserve if stage in plan else None
        rows[check] = {
            "plan_row": stage,
            "plan_peak_gb": None if planned is None else round(planned, 3),
            # vLLM takes its whole memory share whatever it needs: the device peak is compared with that
            "plan_vllm_reserve_gb": None if reserve is None else round(reserve / 1e9, 3),
            "measured_peak_gb": peak,
            "measured_over_plan": None if peak is None or not planned else round(peak / planned, 3),
        }
    return {"rows": rows}


CHECKS = {
    "synthesize_vllm": check_synthesize_vllm,
    "retriever_1gpu": check_retriever_1gpu,
    "retriever_ngpu": check_retriever_ngpu,
    "index_faiss_gpu": check_index_faiss_gpu,
    "reranker_qlora": check_reranker_qlora,
    "quantize": check_quantize,
    "vllm_gptq": lambda work, models: check_vllm(work, models, "gptq"),
    "vllm_awq": lambda work, models: check_vllm(work, models, "awq"),
    "infer": check_infer,
    "plan_vs_measured": check_plan_vs_measured,
}


def run_one(name: str, work: Path, models: Path) -> int:
    """Run check ``name`` here and write its record to ``work/results/name.json``; a raised error is the record."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    try:
        record = {"status": "ok", **CHECKS[name](work, models)}
    except Skip as why:
        record = {"status": "skipped", "reason": str(why)}
    except BaseException as err:  # noqa: BLE001 - any failure is this check's result, never the others'
        record = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[-2000:]}"}
    record["seconds"] = round(time.perf_counter() - t0, 1)
    record["python"] = sys.executable
    out = work / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    print(json.dumps(record, default=str)[:3000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
