#!/usr/bin/env python
"""Exercise the CUDA code paths on a GPU machine and record what ran.

    python benchmarks/cuda_check.py --out results/ [--hidden 1024 --layers 8]

No hub access is assumed: the backbone is a randomly initialised Qwen2 (real module names
q_proj ... down_proj) paired with the SmolLM2 tokenizer from ``--tokenizer``; the data is the
bundled sample. It runs, on the GPU and with the real config (configs/qwen2.5-14b.yaml:
bf16, SDPA/flash attention, gradient checkpointing, QLoRA 4-bit when bitsandbytes is present):

1. a micro benchmark: retriever forward+backward step, fp32 + eager attention vs bf16 + SDPA;
2. ``eedi run`` stages prepare -> train-retriever -> index -> train-reranker -> evaluate on
   data/sample fold 0 (the backbone is random, so the metrics only show that training moves
   them, not how good a real Qwen2.5 is);
3. the FAISS index kind that was used (GPU when faiss-gpu is installed).

Writes ``cuda_check.json`` (versions, timings, metrics, stage statuses) into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def versions() -> dict:
    out = {}
    for name in (
        "torch",
        "transformers",
        "peft",
        "sentence_transformers",
        "trl",
        "accelerate",
        "bitsandbytes",
        "faiss",
        "vllm",
        "llmcompressor",
    ):
        try:
            module = importlib.import_module(name)
            out[name] = getattr(module, "__version__", "?")
        except Exception as err:  # noqa: BLE001 - we record why a package is unusable
            out[name] = f"unavailable: {type(err).__name__}: {str(err)[:120]}"
    import torch

    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def step_benchmark(model_dir: Path, steps: int = 10) -> dict:
    """Seconds per retriever training step (batch 32 x 128 tokens), fp32+eager vs bf16+sdpa."""
    import torch
    from transformers import AutoModel

    results = {}
    for label, dtype, attn in (("fp32_eager", torch.float32, "eager"), ("bf16_sdpa", torch.bfloat16, "sdpa")):
        model = AutoModel.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn).cuda()
        model.gradient_checkpointing_enable()
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (32, 128), device="cuda")
        mask = torch.ones_like(ids)
        for i in range(steps + 3):
            if i == 3:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
            hidden.float().pow(2).mean().backward()
        torch.cuda.synchronize()
        results[label] = (time.perf_counter() - t0) / steps
        results[f"{label}_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    results["speedup_bf16_sdpa_vs_fp32_eager"] = results["fp32_eager"] / results["bf16_sdpa"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", default=str(REPO / ".gpu" / "tokenizer"))
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--run-dir", default="/tmp/eedi-cuda-run")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the pipeline run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"versions": versions()}
    print(json.dumps(report["versions"], indent=1), flush=True)

    from eedi.pretrained import build_tiny_qwen2

    model_dir = build_tiny_qwen2(
        Path(args.run_dir).parent / "qwen2-random",
        args.tokenizer,
        hidden_size=args.hidden,
        layers=args.layers,
        heads=args.hidden // 64,
        kv_heads=max(1, args.hidden // 512),
    )
    report["backbone"] = {"kind": "random Qwen2", "hidden": args.hidden, "layers": args.layers}
    report["step_benchmark"] = step_benchmark(model_dir)
    print(json.dumps(report["step_benchmark"], indent=1), flush=True)

    has_bnb = not str(report["versions"]["bitsandbytes"]).startswith("unavailable")
    overrides = [
        f"data.dir={REPO / 'data' / 'sample'}",
        f"run_dir={args.run_dir}",
        "folds.use=[0]",
        "folds.full_fit=false",
        f"retriever.backbone={model_dir}",
        f"reranker.backbone={model_dir}",
        f"retriever.load_in_4bit={str(has_bnb).lower()}",
        f"reranker.load_in_4bit={str(has_bnb).lower()}",
        "reranker.backend=transformers",
        "synthetic.enabled=false",
        *args.overrides,
    ]
    stages = "prepare,train-retriever,index,train-reranker,evaluate"
    t0 = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eedi",
            "run",
            "--config",
            str(REPO / "configs" / "qwen2.5-14b.yaml"),
            "--stages",
            stages,
            "--force",
            *overrides,
        ],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    report["pipeline"] = {
        "exit_code": result.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "overrides": overrides,
    }
    run_dir = Path(args.run_dir)
    if (run_dir / "manifest.json").exists():
        manifest = json.loads((run_dir / "manifest.json").read_text())
        report["pipeline"]["stages"] = {
            k: {x: v.get(x) for x in ("status", "seconds", "peak_rss_mb", "error")}
            for k, v in manifest["stages"].items()
        }
    if (run_dir / "metrics.json").exists():
        report["metrics"] = json.loads((run_dir / "metrics.json").read_text())
    (out / "cuda_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "versions"}, indent=1, default=str)[:6000])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
