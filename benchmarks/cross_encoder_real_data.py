#!/usr/bin/env python
"""A pointwise MiniLM cross-encoder reranker on one real-data fold: what it costs and what it adds on 2 cores.

    .venv-train/bin/python benchmarks/cross_encoder_real_data.py [--fold 0] [--epochs 1] [--negatives 3]

Input is the ``ours`` run that ``benchmarks/real_data.py`` leaves in ``runs/bench-real/ours``. The
cross-encoder is sentence-transformers' ``CrossEncoder`` on the retriever's backbone (all-MiniLM-L6-v2 with a
new one-logit head), trained with ``CrossEncoderTrainer`` and ``BinaryCrossEntropyLoss`` on the fold's
labelled training pairs: each positive (query text, misconception name) with ``--negatives`` hard negatives
drawn from the top 15 of the fold retriever's candidates for that training pair (``pos_weight`` = negatives,
so positives and negatives weigh the same). It then scores the top ``--depth`` candidates of every
validation pair; the final score is ``w * sigmoid(logit) + (1 - w) * min-max(retrieval score)``, the
fusion rule of the project's reranker (``eedi.rerank.schemes.fuse``), reported for several ``w``.

Writes benchmarks/results/cross_encoder_real_data.json and .md (training loss curve, seconds per step,
scoring pairs per second, MAP@25 per ``w``).
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
from real_data import REPO, RESULTS, machine_fields, metrics_block, write_results  # noqa: E402

WEIGHTS = (0.0, 0.2, 0.3, 0.5, 0.7, 1.0)


def render(record: dict) -> str:
    s, curve = record["settings"], record["loss_curve"]
    loss = f"{curve[0]['loss']:.3f} (step {curve[0]['step']}) -> {curve[-1]['loss']:.3f}" if curve else "-"
    lines = [
        f"MiniLM cross-encoder reranker, fold {record['fold']} of `{record['run_dir']}`, {record['machine']}, "
        f"CPU: {record['cpu']}.",
        "",
        f"`{record['command']}`",
        "",
        f"{record['training_rows']} training rows ({s['negatives']} hard negatives per positive), {record['steps']} "
        f"steps of {s['batch_size']} at lr {s['lr']} in {record['train_seconds']} s ({record['seconds_per_step']} "
        f"s/step); training loss {loss} (a constant prediction scores {record['constant_prediction_loss']}); "
        f"scoring {record['scored_pairs']} pairs at {record['scoring_pairs_per_second']} pairs/s. `w` = 0 is the "
        "retriever's own order, `w` = 1 the cross-encoder's alone.",
        "",
        "| w | MAP@25 | recall@1 | recall@5 | MAP@25 seen | MAP@25 unseen |",
        "|---|---|---|---|---|---|",
    ]
    for name, block in record["results"].items():
        cells = [f"{block[k]:.4f}" for k in ("map@25", "recall@1", "recall@5", "map@25_seen", "map@25_unseen")]
        lines.append(f"| {name[2:]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "bench-real" / "ours"))
    parser.add_argument("--backbone", default=str(REPO / "models" / "all-minilm-l6-v2"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--depth", type=int, default=25)
    parser.add_argument("--out", default=str(RESULTS / "cross_encoder_real_data.json"))
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = parser.parse_args()
    if args.render:
        record = json.loads(Path(args.out).read_text())
        Path(args.out).with_suffix(".md").write_text(render(record) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    import pandas as pd
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.rerank.schemes import fuse

    started = time.time()
    run_dir = Path(args.run_dir)
    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    names = dict(zip(misconceptions["MisconceptionId"].astype(int), misconceptions["MisconceptionName"]))
    train, val = train_val_split(pairs, fold_table, args.fold)
    query = dict(zip(pairs["QuestionId_Answer"], pairs["QueryText"]))
    candidates = pd.read_parquet(RunLayout(run_dir).candidates(model_name(args.fold)))
    candidates = candidates.sort_values(["QuestionId_Answer", "rank"])

    rng = np.random.default_rng(args.seed)
    positives = dict(zip(train["QuestionId_Answer"], train["MisconceptionId"].astype(int)))
    rows: dict[str, list] = {"sentence1": [], "sentence2": [], "label": []}
    for key, group in candidates[candidates["part"] == "train"].groupby("QuestionId_Answer", sort=True):
        positive = positives[key]
        negatives = [m for m in group["MisconceptionId"].astype(int).tolist()[:15] if m != positive]
        chosen = rng.choice(negatives, size=min(args.negatives, len(negatives)), replace=False)
        for misconception, label in [(positive, 1.0), *((int(m), 0.0) for m in chosen)]:
            rows["sentence1"].append(query[key])
            rows["sentence2"].append(names[misconception])
            rows["label"].append(label)
    dataset = Dataset.from_dict(rows).shuffle(seed=args.seed)

    torch.manual_seed(args.seed)
    model = CrossEncoder(args.backbone, num_labels=1, max_length=args.max_length, device="cpu")
    steps = int(np.ceil(len(dataset) / args.batch_size) * args.epochs)
    training_args = CrossEncoderTrainingArguments(
        output_dir=str(REPO / "runs" / "cross-encoder" / f"fold_{args.fold}"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=int(round(0.1 * steps)),
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        logging_steps=20,
        disable_tqdm=False,
    )
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(args.negatives)))
    trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    curve = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]

    top = candidates[(candidates["part"] == "val") & (candidates["rank"] < args.depth)].reset_index(drop=True)
    texts = list(zip(top["QuestionId_Answer"].map(query), top["MisconceptionId"].astype(int).map(names)))
    t0 = time.perf_counter()
    probs = model.predict(texts, batch_size=64, activation_fn=torch.nn.Sigmoid(), show_progress_bar=True)
    score_seconds = time.perf_counter() - t0
    top = top.assign(ce=np.asarray(probs, dtype=np.float64))

    keys = val["QuestionId_Answer"].tolist()
    actual = val["MisconceptionId"].astype(int).tolist()
    seen = set(train["MisconceptionId"].astype(int))
    groups = {k: g for k, g in top.groupby("QuestionId_Answer")}
    results = {}
    for weight in WEIGHTS:
        ranked = []
        for key in keys:
            group = groups[key]
            final = fuse(group["ce"].to_numpy(), group["score"].to_numpy(), weight)
            ranked.append(group["MisconceptionId"].to_numpy()[np.argsort(-final, kind="stable")])
        results[f"w={weight}"] = metrics_block(actual, np.array(ranked), seen)
        logging.info("w=%.1f MAP@25 %.4f", weight, results[f"w={weight}"]["map@25"])
    record = {
        "run_dir": str(run_dir),
        "fold": args.fold,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "run_dir")},
        "training_rows": len(dataset),
        "steps": steps,
        "train_seconds": round(train_seconds),
        "seconds_per_step": round(train_seconds / max(steps, 1), 2),
        "scored_pairs": len(top),
        "scoring_pairs_per_second": round(len(top) / score_seconds, 1),
        "constant_prediction_loss": round(float(2 * args.negatives * np.log(2) / (1 + args.negatives)), 4),
        "loss_curve": curve,
        **machine_fields(started),
        "results": results,
    }
    write_results(args.out, record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
