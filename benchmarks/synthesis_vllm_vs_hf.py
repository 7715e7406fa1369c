#!/usr/bin/env python
"""Generation throughput: vLLM offline batched inference vs Hugging Face ``generate``, same work.

    .venv-infer/bin/python benchmarks/synthesis_vllm_vs_hf.py --config configs/cpu.yaml [key=value ...]

Both sides get the same model (synthetic.engine.model), the same prompts (the synthesize stage's
few-shot prompts for the first ``--prompts`` targets of data.dir, as token ids) and the same token
budget: greedy decoding of exactly ``--max-tokens`` new tokens per prompt (vLLM ``ignore_eos``, HF
``min_new_tokens``), so both produce the same number of tokens and tokens/s compare directly. HF runs
batched with left padding (``--hf-batch-size`` prompts per ``generate`` call). Unconstrained decoding
on both sides: HF has no structured output to match vLLM's.

Both models are loaded first (timed apart, each warmed up), then the two sides take turns for
``--rounds`` rounds, so that other jobs on a shared machine slow both alike; the result records the
load average too. Writes ``benchmarks/results/synthesis_vllm_vs_hf.json``. Needs the inference
environment (vLLM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_prompts(config, n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from eedi.data.artifacts import load_misconceptions, load_pairs
    from eedi.pipeline.runner import run_stage
    from eedi.synthesis.dedup import load_embedder
    from eedi.synthesis.engine import engine_settings, tokenize
    from eedi.synthesis.prompts import select_targets
    from eedi.synthesis.stage import build_prompts as stage_prompts

    run_stage(config, "prepare")
    pairs, misconceptions = load_pairs(config.run_dir), load_misconceptions(config.run_dir)
    targets = select_targets(pairs, misconceptions, n, max_train_examples=10**9)
    embedder = load_embedder(config, misconceptions["MisconceptionName"].tolist())
    tokenizer = AutoTokenizer.from_pretrained(engine_settings(config).model)
    prompts = stage_prompts(targets, pairs, misconceptions, embedder, tokenizer, config)
    return [tokenize(tokenizer, p.prompt) for p in prompts]


class HF:
    """transformers ``generate``, batched with left padding."""

    def __init__(self, config, batch_size: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from eedi.runtime import model_kwargs, resolve
        from eedi.synthesis.engine import engine_settings

        model_path = engine_settings(config).model
        self.placement = resolve(config.runtime)
        self.torch = torch
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **model_kwargs(self.placement))
        self.model = self.model.to(self.placement.device).eval()
        self.setup_s = time.perf_counter() - t0
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch_size = batch_size

    def _generate(self, batch: list[list[int]], new_tokens: int) -> list[list[int]]:
        torch, device = self.torch, self.placement.device
        width = max(len(p) for p in batch)
        # left padding: every row's last prompt token sits at the same position, where decoding starts
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=self.pad,
            )
        return out[:, width:].tolist()

    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        from tqdm import tqdm

        outputs = []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="HF generate"):
            outputs.extend(self._generate(prompts[start : start + self.batch_size], new_tokens))
        return outputs


class VLLM:
    """``vllm.LLM.generate`` with the stage's engine settings."""

    def __init__(self, config):
        from eedi.synthesis.engine import engine_settings, start_engine

        t0 = time.perf_counter()
        self.llm = start_engine(engine_settings(config))
        self.setup_s = time.perf_counter() - t0

    def generate(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        results = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        return [list(r.outputs[0].token_ids) for r in results]

    def close(self) -> None:
        from eedi.synthesis.engine import shutdown_engine

        shutdown_engine(self.llm)


def agreement(a: list[list[int]], b: list[list[int]], first: int = 32) -> float:
    """Share of prompts whose first ``first`` greedy tokens are identical on both sides (same model check)."""
    return round(sum(x[:first] == y[:first] for x, y in zip(a, b)) / len(a), 3)


def engine_dtype(config) -> str:
    from eedi.synthesis.engine import engine_settings

    return engine_settings(config).kwargs["dtype"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "synthesis_vllm_vs_hf.json"))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    import torch
    import transformers
    import vllm as vllm_package

    from eedi.config import load_config

    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(args.config, [f"run_dir={run_dir}", *args.overrides])
        prompts = build_prompts(config, args.prompts)
    sides = {"hf_generate": HF(config, args.hf_batch_size), "vllm": VLLM(config)}
    seconds = {name: 0.0 for name in sides}
    tokens = {name: 0 for name in sides}
    outputs: dict[str, list[list[int]]] = {}
    load = [os.getloadavg()[0]]
    try:
        for side in sides.values():
            side.generate(prompts[:1], 2)  # warm-up (allocator, kernels, first scheduling)
        for _ in range(args.rounds):
            for name, side in sides.items():
                t0 = time.perf_counter()
                outputs[name] = side.generate(prompts, args.max_tokens)
                seconds[name] += time.perf_counter() - t0
                tokens[name] += sum(len(o) for o in outputs[name])
                load.append(os.getloadavg()[0])
    finally:
        sides["vllm"].close()
    expected = args.rounds * args.prompts * args.max_tokens
    assert tokens["hf_generate"] == tokens["vllm"] == expected, (tokens, expected)
    result = {
        name: {
            "setup_s": round(sides[name].setup_s, 2),
            "seconds": round(seconds[name], 2),
            "tokens": tokens[name],
            "tokens_per_s": round(tokens[name] / seconds[name], 2),
        }
        for name in sides
    }
    result["hf_generate"]["batch_size"] = args.hf_batch_size
    record = {
        "model": config.synthetic.engine.model,
        "dtype": engine_dtype(config),
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        **result,
        "ratio_vllm_over_hf": round(result["vllm"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"], 2),
        "greedy_first32_agreement": agreement(outputs["hf_generate"], outputs["vllm"]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": [round(x, 2) for x in load],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": vllm_package.__version__,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    hf, vl = record["hf_generate"], record["vllm"]
    print(
        f"\n| | tokens/s | seconds | set-up s |\n|---|---|---|---|\n"
        f"| HF generate (batch {hf['batch_size']}, left padding) | {hf['tokens_per_s']} | {hf['seconds']} | "
        f"{hf['setup_s']} |\n| vLLM LLM.generate | {vl['tokens_per_s']} | {vl['seconds']} | {vl['setup_s']} |\n\n"
        f"vLLM / HF: {record['ratio_vllm_over_hf']}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
