#!/usr/bin/env python
"""Seconds per reranker window on this CPU by scoring batch size (``reranker.score_batch_size``).

    python benchmarks/score_batch_size.py --run-dir runs/bench-new --emulate-avx2

Scores the fold's training windows of real questions (``reranker/<fold>/train_windows.parquet``, prompts of the
sample) with the fold's merged reranker through the stage's own ``TransformersScorer``, once per batch size, each
after one untimed warm-up batch, and writes JSON. ``--emulate-avx2`` re-runs this script with PyTorch, oneDNN and
MKL capped at AVX2 kernels (the caps must be set before torch loads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pipeline_run import AVX2_CAPS  # noqa: E402
from real_data import cpu_flags  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a finished run of configs/cpu.yaml")
    parser.add_argument("--fold", default="fold_0")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--emulate-avx2", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "score_batch_size.json"))
    args = parser.parse_args()
    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in AVX2_CAPS.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_CAPS})

    import pandas as pd
    import torch

    from eedi.config import load_config
    from eedi.data.artifacts import load_misconceptions, load_pairs
    from eedi.layout import RunLayout
    from eedi.rerank.prompts import misconception_names, pair_lookup, window_prompts
    from eedi.rerank.scoring import TransformersScorer, encode_prompts, label_token_ids
    from eedi.runtime import resolve

    torch.set_num_threads(args.threads)
    run = RunLayout(args.run_dir)
    cfg = load_config(REPO / "configs" / "cpu.yaml", [f"run_dir={args.run_dir}"])
    folder = run.reranker(args.fold)
    pairs = pair_lookup(load_pairs(run.root))
    windows = pd.read_parquet(folder / "train_windows.parquet")
    windows = windows[windows["QuestionId_Answer"].isin(pairs)]  # the real questions' windows, not synthetic ones
    scorer = TransformersScorer(folder / "merged", resolve(cfg.runtime), batch_size=1)
    names = misconception_names(load_misconceptions(run.root))
    prompts = window_prompts(windows, pairs, names, scorer.tokenizer)
    ids = encode_prompts(scorer.tokenizer, prompts, cfg.reranker.max_length)
    labels = label_token_ids(scorer.tokenizer, cfg.reranker.window_size)
    lengths = sorted(len(x) for x in ids)
    rows = []
    for size in args.batch_sizes:
        scorer.batch_size = size
        scorer.label_logprobs(ids[:size], labels)  # warm-up
        t0 = time.perf_counter()
        scorer.label_logprobs(ids, labels)
        seconds = time.perf_counter() - t0
        per_window = round(seconds / len(ids), 4)
        rows.append({"batch_size": size, "seconds": round(seconds, 2), "seconds_per_window": per_window})
        print(f"batch {size:>3}: {seconds / len(ids):.3f} s/window", flush=True)
    record = {
        "run_dir": args.run_dir,
        "windows": len(ids),
        "tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
        "threads": args.threads,
        "results": rows,
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_flags(), "capped_at_avx2": args.emulate_avx2},
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
