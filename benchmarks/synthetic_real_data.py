#!/usr/bin/env python
"""Synthetic questions on real data: do SmolLM2-135M's questions help the misconceptions a fold never saw?

    .venv-train/bin/python benchmarks/synthetic_real_data.py [--fold 0] [--skip-retrain]

Input is the ``ours`` run that ``benchmarks/real_data.py`` leaves in ``runs/bench-real/ours`` (its
prepare outputs, fold retrievers and metrics). For one fold:

1. **Targets**: the misconceptions of the fold's validation pairs that its training part never uses
   (185 on fold 0 of eedi-dev). This is an oracle choice of *which* misconceptions to write for, never of
   the questions: it spends the generation budget where the fold can show an effect. The Kaggle analogue,
   a question for every misconception absent from train.csv (about 1,000 here), takes hours on 2 cores.
2. **Synthesize**: the project's ``synthesize`` stage (vLLM CPU engine, in the inference environment) with
   ``--synthesis-config``'s synthetic section, on a run directory that holds only the fold's training
   pairs, so no validation question can be a few-shot example.
3. **Label memory**: the fold's trained retriever, unchanged, with the synthetic rows added to the labelled
   pairs its label memory and unseen prior are built from (``CandidateRetriever``).
4. **Retrain** (unless ``--skip-retrain``): ``train-retriever`` and ``index`` for the fold with
   ``synthetic.use=true``, the benchmark's config otherwise, against the benchmark's own fold retriever
   (same config and seed, no synthetic rows).

Reported: MAP@25, recall@{1,5,25,100}, MAP@25 seen/unseen, and MAP@25 over the validation pairs whose
misconception got an accepted synthetic question. Writes benchmarks/results/synthetic_real_data.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import REPO, RESULTS, machine_fields, metrics_block, write_results  # noqa: E402

SYNTHESIS_OVERRIDES = (
    "synthetic.enabled=true",
    "synthetic.max_train_examples=0",
    "synthetic.checkpoint_every=64",
    "synthetic.question_chars=[10,500]",
    "synthetic.answer_chars=[1,100]",
)


def synthesis_run_dir(bench_run: Path, fold: int, out: Path) -> int:
    """A run directory with the fold's training pairs and misconceptions = seen + targets; returns #targets."""
    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout

    pairs, folds, misconceptions = load_pairs(bench_run), load_folds(bench_run), load_misconceptions(bench_run)
    train, val = train_val_split(pairs, folds, fold)
    seen = set(train["MisconceptionId"].astype(int))
    targets = set(val["MisconceptionId"].astype(int)) - seen
    layout = RunLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs[(pairs["split"] == "train") & ~pairs["QuestionId"].isin(val["QuestionId"])].to_parquet(
        layout.pairs, index=False
    )
    keep = misconceptions["MisconceptionId"].astype(int).isin(seen | targets)
    misconceptions[keep].to_parquet(layout.misconceptions, index=False)
    shutil.copy(RunLayout(bench_run).folds, layout.folds)
    return len(targets)


def synthesize_child(config: str, overrides: list[str]) -> None:
    """Runs in the inference environment: the synthesize stage's library function on the prepared run dir."""
    from eedi.config import load_config
    from eedi.synthesis.stage import synthesize

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    synthesize(load_config(config, overrides))


def evaluate(ranked, train, val, covered: set[int]) -> dict:
    actual = val["MisconceptionId"].astype(int).tolist()
    block = metrics_block(actual, ranked, set(train["MisconceptionId"].astype(int)))
    mask = [a in covered for a in actual]
    if any(mask):
        sub = [r for r, m in zip(ranked.tolist(), mask) if m]
        sub_block = metrics_block([a for a, m in zip(actual, mask) if m], np.array(sub), set())
        block["map@25_covered"] = sub_block["map@25"]
        block["n_covered"] = int(sum(mask))
    return block


def generation_record(syn_dir: Path, summary: dict) -> dict:
    """The synthesis run that generated the rows: this one, or (when it only resumed) the earlier one,
    kept as generation_summary.json next to summary.json."""
    from eedi.layout import RunLayout

    kept = RunLayout(syn_dir).synthetic_summary.with_name("generation_summary.json")
    if summary["targets"]["generated_now"]:
        kept.write_text(json.dumps(summary, indent=2) + "\n")
        return summary["this_run"]
    return json.loads(kept.read_text())["this_run"] if kept.is_file() else {}


def render(record: dict) -> str:
    keys = ("map@25", "recall@25", "map@25_seen", "map@25_unseen", "map@25_covered")
    gen = record.get("generation", {})
    lines = [
        f"Synthetic questions on fold {record['fold']} of the real-data benchmark (`{record['bench_run']}`), "
        f"{record['machine']}, CPU: {record['cpu']}.",
        "",
        f"`{record['command']}`",
        "",
        f"{record['targets']} targets (validation misconceptions unseen in the fold's training part); "
        f"{record['synthetic_rows']} synthetic rows kept for {record['targets_covered']} of them (accept rate "
        f"{record['synthesis_summary'].get('accept_rate')}). Generation: {gen.get('prompts')} prompts, "
        f"{gen.get('completion_tokens')} completion tokens in {gen.get('generation_s')} s "
        f"({gen.get('tokens_per_s')} tokens/s, engine start {gen.get('engine_start_s')} s).",
    ]
    if record.get("retrain_wall_seconds"):
        lines[-1] += f" Retraining and indexing the fold: {record['retrain_wall_seconds']} s wall."
    lines += ["", "| system | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, block in record["systems"].items():
        lines.append(f"| {name} | " + " | ".join(f"{block[k]:.4f}" if k in block else "–" for k in keys) + " |")
    n_covered = next(iter(record["systems"].values())).get("n_covered", 0)
    lines += ["", f"`map@25_covered`: the {n_covered} validation pairs whose misconception has a synthetic row."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench-run", default=str(REPO / "runs" / "bench-real" / "ours"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eedi-dev"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--config", default="configs/cpu-kaggle.yaml", help="the benchmark's config")
    parser.add_argument("--synthesis-config", default="configs/cpu.yaml", help="its synthetic section is used")
    parser.add_argument("--work", default=str(REPO / "runs" / "syn-oracle"))
    parser.add_argument("--skip-retrain", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "synthetic_real_data.json"))
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    parser.add_argument("--child-synthesize", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_synthesize:
        synthesize_child(args.child_synthesize[0], args.child_synthesize[1:])
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    if args.render:
        record = json.loads(out.read_text())
        if not record.get("generation"):
            record["generation"] = generation_record(
                Path(args.work) / f"fold{record['fold']}", {"targets": {"generated_now": 0}}
            )
            out.write_text(json.dumps(record, indent=2) + "\n")
        out.with_suffix(".md").write_text(render(record) + "\n")
        return 0

    import pandas as pd

    from eedi.config import RuntimeConfig, load_config
    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.retrieval.model import load_encoder
    from eedi.retrieval.search import CandidateRetriever
    from eedi.runtime import resolve
    from eedi.synthesis.store import load_synthetic_pairs

    bench_run, work, fold = Path(args.bench_run), Path(args.work), args.fold
    data = f"data.dir={Path(args.data).resolve()}"
    started = time.time()
    syn_dir = work / f"fold{fold}"
    n_targets = synthesis_run_dir(bench_run, fold, syn_dir)
    syn_overrides = [f"run_dir={syn_dir}", data, f"synthetic.budget={n_targets}", *SYNTHESIS_OVERRIDES]
    infer_python = os.environ.get("EEDI_INFER_PYTHON") or str(REPO / ".venv-infer" / "bin" / "python")
    logging.info("synthesize: %d targets in %s (log %s)", n_targets, syn_dir, work / "synthesize.log")
    t0 = time.perf_counter()
    with open(work / "synthesize.log", "w") as log_file:
        result = subprocess.run(
            [infer_python, __file__, "--child-synthesize", args.synthesis_config, *syn_overrides],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    if result.returncode:
        raise SystemExit(f"synthesize failed (exit {result.returncode}); see {work / 'synthesize.log'}")
    synth_seconds = time.perf_counter() - t0
    syn_cfg = load_config(REPO / args.synthesis_config, [*syn_overrides, "synthetic.use=true"])
    summary = json.loads(RunLayout(syn_dir).synthetic_summary.read_text())
    synthetic = load_synthetic_pairs(syn_cfg)
    covered = set(synthetic["MisconceptionId"].astype(int))

    pairs, folds, misconceptions = load_pairs(bench_run), load_folds(bench_run), load_misconceptions(bench_run)
    train, val = train_val_split(pairs, folds, fold)
    cfg = load_config(REPO / args.config, [data, f"run_dir={bench_run}", "index.top_k=100"])
    model = load_encoder(
        RunLayout(bench_run).retriever_model(model_name(fold)), resolve(RuntimeConfig(device="cpu", dtype="float32"))
    )
    queries = val["QueryText"].tolist()
    systems = {}
    ranked = CandidateRetriever(model, misconceptions, cfg, train).search(queries)[1]
    systems["ours"] = evaluate(ranked, train, val, covered)
    with_rows = pd.concat([train, synthetic], ignore_index=True)
    ranked = CandidateRetriever(model, misconceptions, cfg, with_rows).search(queries)[1]
    systems["ours, synthetic rows in the label memory"] = evaluate(ranked, train, val, covered)

    retrain_seconds = None
    if not args.skip_retrain:
        run_dir = work / f"retrain_fold{fold}"
        common = [
            "--config",
            args.config,
            data,
            f"run_dir={run_dir}",
            f"folds.use=[{fold}]",
            "folds.full_fit=false",
            "synthetic.enabled=true",
            "synthetic.use=true",
        ]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "eedi", "prepare", "--force", *common], cwd=REPO, check=True)
        destination = RunLayout(run_dir).synthetic_rows
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(RunLayout(syn_dir).synthetic_rows, destination)
        for stage in ("train-retriever", "index"):
            logging.info("retrain: %s", stage)
            with open(work / f"retrain.{stage}.log", "w") as log_file:
                subprocess.run(
                    [sys.executable, "-m", "eedi", stage, "--force", *common],
                    cwd=REPO,
                    check=True,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
        retrain_seconds = round(time.perf_counter() - t0)
        retrained = load_encoder(
            RunLayout(run_dir).retriever_model(model_name(fold)), resolve(RuntimeConfig(device="cpu", dtype="float32"))
        )
        for name, labelled in (("", train), (", and in the label memory", with_rows)):
            ranked = CandidateRetriever(retrained, misconceptions, cfg, labelled).search(queries)[1]
            systems[f"ours retrained with synthetic rows{name}"] = evaluate(ranked, train, val, covered)

    record = {
        "bench_run": str(bench_run),
        "fold": fold,
        "config": args.config,
        "synthesis_config": args.synthesis_config,
        "targets": n_targets,
        "synthetic_rows": len(synthetic),
        "targets_covered": len(covered),
        "synthesis_summary": summary,
        "generation": generation_record(syn_dir, summary),
        "synthesize_wall_seconds": round(synth_seconds),
        "retrain_wall_seconds": retrain_seconds,
        **machine_fields(started),
        "systems": systems,
    }
    write_results(out, record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
