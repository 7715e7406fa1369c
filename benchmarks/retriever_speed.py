#!/usr/bin/env python
"""Seconds per training step of the retriever under settings that change how fast it trains, side by side.

    .venv-train/bin/python benchmarks/retriever_speed.py --data build/real-scale --steps 40 --repeats 2 \
        --emulate-avx2 --variant "mini_batch 16=" --variant "mini_batch 32=retriever.mini_batch_size=32" \
        [--config configs/cpu-kaggle.yaml] [--out benchmarks/results/retriever_speed.json]

Every variant is the config plus its overrides (``name=key=value,key=value``; nothing after the first ``=`` is
the config as it is). Each one trains ``--steps`` steps of the full-fit retriever (``folds.full_fit``: no
validation scoring) on the same prepared data in a fresh run directory, its stage in its own process as
``eedi run`` runs it; the variants take turns, ``--repeats`` rounds, so drift of the machine falls on all of
them. Reported per variant: the median over rounds of the training seconds (``train_log.jsonl``: the Trainer's
loop, corpus refreshes included), of the refreshes alone, and the ratio to the first variant.

For settings that do not change the loss (how texts are chunked, encode batch sizes) this is the whole
measurement; for those that do, a quality benchmark (``benchmarks/real_data.py``) has to go with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_run import AVX2_CAPS  # noqa: E402
from real_data import REPO, RESULTS, machine_fields, write_results  # noqa: E402

EEDI = str(Path(sys.executable).parent / "eedi")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: give it a name, e.g. 'mini_batch 32=retriever.mini_batch_size=32'")
    return name.strip(), [o for o in overrides.split(",") if o]


def train_seconds(run_dir: Path, config: Path, data: Path, steps: int, overrides: list[str], env: dict) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: nothing trained is reused
    common = [f"data.dir={data}", f"run_dir={run_dir}", "folds.use=[]", "folds.full_fit=true"]
    common += [f"retriever.max_steps={steps}", *overrides]
    for stage in ("prepare", "train-retriever"):
        subprocess.run([EEDI, "run", "--config", str(config), *common, "--stages", stage], check=True, env=env)
    last = json.loads((run_dir / "retriever" / "full" / "train_log.jsonl").read_text().splitlines()[-1])
    return {"train_seconds": last["train_seconds"], "corpus_refresh_seconds": last["corpus_refresh_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a Kaggle-shaped folder (train.csv, ...)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cpu-kaggle.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variant", action="append", required=True, help="name=key=value,key=value")
    parser.add_argument("--emulate-avx2", action="store_true", help="cap PyTorch, oneDNN and MKL at AVX2 kernels")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "retriever-speed")
    parser.add_argument("--out", type=Path, default=RESULTS / "retriever_speed.json")
    args = parser.parse_args()

    started = time.time()
    env = {**os.environ, **(AVX2_CAPS if args.emulate_avx2 else {})}
    variants = [parse_variant(v) for v in args.variant]
    rounds: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):
        for i, (name, overrides) in enumerate(variants):
            run_dir = args.work / f"variant_{i}"
            rounds[name].append(train_seconds(run_dir, args.config, args.data, args.steps, overrides, env))
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("train_seconds", "corpus_refresh_seconds")}
        for name, runs in rounds.items()
    }
    base = medians[variants[0][0]]["train_seconds"]
    record = {
        "benchmark": "retriever_speed",
        **machine_fields(started),
        "capped_at_avx2": args.emulate_avx2,
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "data": str(args.data),
        "steps": args.steps,
        "variants": {name: {"overrides": o, "rounds": rounds[name], **medians[name]} for name, o in variants},
    }
    capped = ", kernels capped at AVX2" if args.emulate_avx2 else ""
    lines = [
        f"{args.steps} training steps of the full-fit retriever, median of {args.repeats} rounds; "
        f"{record['machine']}, {record['cpu']}{capped}.",
        "",
        "| variant | overrides | training s | of which corpus refresh s | ratio to the first |",
        "|---|---|---|---|---|",
    ]
    for name, overrides in variants:
        m = medians[name]
        lines.append(
            f"| {name} | {', '.join(overrides) or '(the config)'} | {m['train_seconds']:.1f} | "
            f"{m['corpus_refresh_seconds']:.1f} | {m['train_seconds'] / base:.2f}x |"
        )
    write_results(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    main()
