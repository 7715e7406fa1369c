#!/usr/bin/env python
"""The pipeline's feature reranker stage (``reranker.kind: features``) on real data, both kinds of fold.

    .venv-train/bin/python benchmarks/feature_reranker_real_data.py --runs runs/real-group runs/real-unseen \
        [--seeds 0 1 2] [--variants all seen ...] [key=value ...]

Each ``--runs`` folder is a CV run of the CPU-Kaggle profile on ``eedi-dev`` through ``index`` (3 folds), made by

    eedi run --config configs/cpu-kaggle.yaml data.dir=../shared/eedi-dev run_dir=runs/real-<kind> \
        "folds.use=[0,1,2]" folds.full_fit=false folds.mode=<kind> --stages prepare,train-retriever,index

with ``<kind>`` ``group`` (question-grouped folds) and ``unseen`` (``folds.unseen_share`` of the misconceptions held
out of training: about half the validation pairs unseen). Nothing is retrained here: for every variant and seed
the script runs the stage itself (:func:`eedi.rerank.stage.run`) on that run's candidates. Fold k's ranker learns
from the validation candidates of the other two folds and reranks fold k's, which neither it nor fold k's
retriever trained on. Seeds are LightGBM's (the run's retrievers are one seed each: 13 minutes a fold on 2 cores).

Reported per kind, variant and fold (mean over seeds): MAP@25 (mix), MAP@25, seen and unseen, the retriever's and
the reranker's; the gain in the mix with its spread over seeds; CPU seconds of the stage; the ranker's MAP@25 on
its own training pairs by boosting iteration (is it learning?). Then the mean and spread over folds.

Writes benchmarks/results/feature_reranker_real_data.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import RESULTS, machine_fields, write_results  # noqa: E402

KEYS = ("map@25_mix", "map@25", "map@25_seen", "map@25_unseen")
# name -> overrides of reranker.features (on top of the run's config with reranker.kind=features)
VARIANTS: dict[str, list[str]] = {
    "all": ["reranker.features.move=all"],
    "seen": ["reranker.features.move=seen"],
    "top_k 5": ["reranker.features.move=top_k", "reranker.features.top_k=5"],
    "blend 0.5": ["reranker.features.move=blend", "reranker.features.blend_weight=0.5"],
    "all, unweighted": ["reranker.features.move=all", "reranker.features.test_mix_weighting=false"],
}


def run_config(run_dir: Path, overrides: list[str]):
    from eedi.config import Config, apply_overrides

    raw = json.loads((run_dir / "manifest.json").read_text())["config"]
    return Config.model_validate(apply_overrides(raw, [f"run_dir={run_dir}", *overrides]))


def measure(run_dir: Path, variant: list[str], seed: int, extra: list[str]) -> dict:
    from eedi.rerank.stage import run as train_reranker

    cfg = run_config(
        run_dir,
        ["reranker.enabled=true", "reranker.kind=features", "quantize.enabled=false", f"seed={seed}", *variant, *extra],
    )
    cpu, wall = time.process_time(), time.perf_counter()
    summary = train_reranker(cfg)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {}
    for name, fold in summary["folds"].items():
        out[name] = {
            "retriever": {k: metrics[name]["retriever"].get(k) for k in KEYS},
            "reranker": {k: metrics[name]["reranker"].get(k) for k in KEYS},
            "train_pairs": fold["train"]["pairs"],
            "train_map@25_by_iteration": fold["train"]["train_map@25_by_iteration"],
        }
    return {"folds": out, "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1)}


def summarise(by_seed: dict[int, dict]) -> dict:
    """Per fold: mean over seeds of each metric, the gain in the mix and its spread over seeds; then over folds."""
    folds = sorted(next(iter(by_seed.values()))["folds"])
    per_fold = {}
    for name in folds:
        runs = [by_seed[s]["folds"][name] for s in by_seed]
        block = {}
        for side in ("retriever", "reranker"):
            block[side] = {k: float(np.mean([r[side][k] for r in runs])) for k in KEYS if runs[0][side][k] is not None}
        gains = [r["reranker"]["map@25_mix"] - r["retriever"]["map@25_mix"] for r in runs]
        block["gain_mix"] = float(np.mean(gains))
        block["gain_mix_seed_std"] = float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0
        block["gain_unseen"] = float(
            np.mean([r["reranker"]["map@25_unseen"] - r["retriever"]["map@25_unseen"] for r in runs])
        )
        block["train_map@25_by_iteration"] = runs[0]["train_map@25_by_iteration"]
        per_fold[name] = block
    mean = {}
    for side in ("retriever", "reranker"):
        for k in KEYS:
            values = [b[side][k] for b in per_fold.values() if k in b[side]]
            mean[f"{side} {k}"] = [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]
    for k in ("gain_mix", "gain_unseen"):
        values = [b[k] for b in per_fold.values()]
        mean[k] = [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]
    cpu = float(np.mean([r["cpu_seconds"] for r in by_seed.values()]))
    return {"folds": per_fold, "mean": mean, "stage_cpu_seconds": round(cpu, 1)}


def markdown(record: dict) -> str:
    lines = [
        "# The feature reranker stage on real data",
        "",
        f"`{record['invocation']}`",
        "",
        f"Machine: {record.get('machine', '?')}, {record.get('cpu', '?')}; seeds {record['seeds']} (LightGBM's); "
        f"MAP@25 (mix) = {1 - record['unseen_share']:g} x seen + {record['unseen_share']:g} x unseen.",
        "",
    ]
    for kind, variants in record["kinds"].items():
        lines += [
            f"## {kind} folds ({record['runs'][kind]})",
            "",
            "| variant | mix: retriever -> reranker | gain (mix) | unseen gain | seen: retriever -> reranker | "
            "MAP@25: retriever -> reranker | gain per fold (seed std) | stage CPU s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            m = v["mean"]

            def arrow(key: str, m=m) -> str:
                return f"{m[f'retriever {key}'][0]:.4f} -> {m[f'reranker {key}'][0]:.4f}"

            per_fold = ", ".join(f"{b['gain_mix']:+.4f} ({b['gain_mix_seed_std']:.4f})" for b in v["folds"].values())
            lines.append(
                f"| {name} | {arrow('map@25_mix')} | {m['gain_mix'][0]:+.4f} ± {m['gain_mix'][1]:.4f} | "
                f"{m['gain_unseen'][0]:+.4f} | {arrow('map@25_seen')} | {arrow('map@25')} | {per_fold} | "
                f"{v['stage_cpu_seconds']} |"
            )
        first = next(iter(variants.values()))
        curves = "; ".join(f"{f}: {b['train_map@25_by_iteration']}" for f, b in first["folds"].items())
        lines += ["", f"Training MAP@25 by boosting iteration ({next(iter(variants))}, first seed): {curves}", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="CV run folders through index, one per fold kind")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(RESULTS / "feature_reranker_real_data.json"))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    started = time.time()
    record: dict = {
        "invocation": ".venv-train/bin/python benchmarks/feature_reranker_real_data.py " + " ".join(sys.argv[1:]),
        "seeds": args.seeds,
        "overrides": args.overrides,
        "runs": {},
        "kinds": {},
    }
    for run in map(Path, args.runs):
        base = run_config(run, [])
        kind = base.folds.mode
        record["runs"][kind] = str(run)
        record["unseen_share"] = base.evaluation.unseen_share
        record["kinds"][kind] = {}
        for name in args.variants:
            by_seed = {s: measure(run, VARIANTS[name], s, args.overrides) for s in args.seeds}
            record["kinds"][kind][name] = summarise(by_seed)
            m = record["kinds"][kind][name]["mean"]
            print(
                f"{kind:7s} {name:16s} mix gain {m['gain_mix'][0]:+.4f} ± {m['gain_mix'][1]:.4f}  "
                f"unseen gain {m['gain_unseen'][0]:+.4f}",
                flush=True,
            )
        record.update(machine_fields(started))
        write_results(args.out, record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
