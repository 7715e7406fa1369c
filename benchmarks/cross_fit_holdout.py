#!/usr/bin/env python
"""Cross-fitted retrievers plus the feature reranker against the CPU-Kaggle profile, on a holdout of real data.

    .venv-train/bin/eedi make-holdout --data ../shared/eedi-dev --out HOLDOUT --seed 42
    .venv-train/bin/python benchmarks/cross_fit_holdout.py --holdout HOLDOUT --work runs/cross-fit-holdout \
        [--folds 2] [--out benchmarks/results/cross_fit_holdout.json]

The feature reranker (``reranker.kind: features``) must learn from candidates scored by a retriever that never saw
them. The profile trains one retriever on every labelled pair, so it has none. Cross-fitting does, at about the
same training cost: ``--folds`` retrievers, each on the other folds' pairs (``folds.full_fit=false``), whose
validation candidates cover every labelled pair out of fold. The ranker learns from those; the test rows get the
mean score of the fold retrievers (each with the label memory over every labelled pair) and then the ranker.

Systems, each an ``eedi run`` on the holdout's train.csv and scored on its labels (``eedi score``):

* ``full fit``: ``configs/cpu-kaggle.yaml`` as it is (one retriever, no reranker);
* ``cross-fit``: the fold retrievers' mean, no reranker (the cross-fit run's infer stage again, reranker off);
* ``cross-fit + ranker``: the same candidates, reranked (the profile with the reranker on);
* ``full fit + ranker``: the cross-fit run's ranker applied to the full-fit run's candidates. It costs both
  trainings, so it is over the profile's budget: it shows what the ranker adds to the better retriever.

Each run directory is reused where its stages are current (``eedi run`` skips them), so a second call only
scores. Seconds are the stages' own (the runs' manifest.json). Writes the results file and its .md twin.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import REPO, RESULTS, machine_fields, write_results  # noqa: E402

EEDI = str(Path(sys.executable).parent / "eedi")
CONFIG = REPO / "configs" / "cpu-kaggle.yaml"
KEYS = ("map@25_mix", "map@25", "map@25_seen", "map@25_unseen", "recall@25")
TIMED = ("train-retriever", "index", "train-reranker", "infer")


def eedi_run(run_dir: Path, data: Path, overrides: list[str], stages: str | None = None) -> None:
    command = [EEDI, "run", "--config", str(CONFIG), f"data.dir={data}", f"run_dir={run_dir}", *overrides]
    subprocess.run([*command, *(["--stages", stages] if stages else [])], check=True)


def stage_seconds(run_dir: Path) -> dict[str, float]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return {name: round(stages[name]["seconds"], 1) for name in TIMED if name in stages}


def rerank_other_candidates(ranked_run: Path, candidates_run: Path, out: Path) -> Path:
    """The ranker of ``ranked_run`` (reranker/full) over the test candidates of ``candidates_run``."""
    import pandas as pd

    from eedi.config import Config
    from eedi.data.artifacts import load_misconceptions, load_pairs
    from eedi.data.submission import write_submission
    from eedi.evaluation.metrics import candidates_to_lists
    from eedi.layout import FULL, TEST, RunLayout
    from eedi.rerank.ltr import FeatureReranker

    config = Config.model_validate(json.loads((ranked_run / "manifest.json").read_text())["config"])
    pairs, misconceptions = load_pairs(candidates_run), load_misconceptions(candidates_run)
    labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
    candidates = pd.read_parquet(RunLayout(candidates_run).candidates(TEST))
    ranker = FeatureReranker(RunLayout(ranked_run).reranker(FULL), labelled, misconceptions)
    reranked = ranker.rerank(config, candidates, pairs)
    test = pairs[pairs["split"] == "test"]
    return write_submission(out, candidates_to_lists(reranked.assign(rank=reranked["final_rank"])), test, sample=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holdout", type=Path, required=True, help="a folder made by `eedi make-holdout`")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "cross-fit-holdout")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitted retrievers (folds.n_splits)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cross_fit_holdout.json")
    args = parser.parse_args()
    from eedi.evaluation.holdout import score_submission

    started = time.time()
    full, cross = args.work / "full-fit", args.work / "cross-fit"
    cross_fit = [
        f"folds.n_splits={args.folds}",
        f"folds.use=[{','.join(map(str, range(args.folds)))}]",
        "folds.full_fit=false",
        "retriever.validate_epochs=false",  # the index stage scores each fold's validation pairs once
        "reranker.enabled=true",
        "reranker.kind=features",
        "quantize.enabled=false",
    ]
    eedi_run(full, args.holdout, [])
    eedi_run(cross, args.holdout, cross_fit)
    retriever_only = args.work / "cross-fit-retriever"
    shutil.rmtree(retriever_only, ignore_errors=True)
    shutil.copytree(cross, retriever_only)
    eedi_run(retriever_only, args.holdout, [*cross_fit, "reranker.enabled=false"], stages="infer")
    both = rerank_other_candidates(cross, full, args.work / "full-fit-ranked" / "submission.csv")

    submissions = {
        "full fit (the profile)": full / "submission.csv",
        "cross-fit": retriever_only / "submission.csv",
        "cross-fit + ranker": cross / "submission.csv",
        "full fit + ranker (both trainings)": both,
    }
    labels = args.holdout / "labels.csv"
    systems = {name: score_submission(path, labels) for name, path in submissions.items()}
    seconds = {"full fit": stage_seconds(full), "cross-fit": stage_seconds(cross)}
    holdout = json.loads((args.holdout / "holdout.json").read_text())
    record = {
        "benchmark": "cross_fit_holdout",
        **machine_fields(started),
        "holdout": holdout,
        "folds": args.folds,
        "systems": {
            name: {k: result.get(k) for k in (*KEYS, "n", "n_seen", "n_unseen")} for name, result in systems.items()
        },
        "stage_seconds": seconds,
    }
    base = systems["full fit (the profile)"]["map@25_mix"]
    lines = [
        f"Holdout (seed {holdout['seed']}): {holdout['questions']['train']} training questions, "
        f"{holdout['questions']['test']} held out; "
        f"{systems['cross-fit']['n']} labelled pairs, {systems['cross-fit']['n_unseen']} of them unseen. "
        f"Cross-fit: {args.folds} retrievers. {record['machine']}, {record['cpu']}.",
        "",
        "| system | MAP@25 (mix) | vs the profile | MAP@25 | seen | unseen | recall@25 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in systems.items():
        lines.append(
            f"| {name} | {r['map@25_mix']:.4f} | {r['map@25_mix'] - base:+.4f} | {r['map@25']:.4f} | "
            f"{r['map@25_seen']:.4f} | {r['map@25_unseen']:.4f} | {r['recall@25']:.4f} |"
        )
    lines += ["", "| run | " + " | ".join(TIMED) + " |", "|---|" + "---|" * len(TIMED)]
    for name, stages in seconds.items():
        lines.append(f"| {name} | " + " | ".join(str(stages.get(s, "")) for s in TIMED) + " |")
    write_results(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    main()
