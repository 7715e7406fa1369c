#!/usr/bin/env python
"""A pointwise MiniLM cross-encoder reranker on one real-data fold: what it costs and what it adds on 2 cores.

    .venv-train/bin/python benchmarks/cross_encoder_real_data.py [--fold 0] [--epochs 1] [--negatives 3]
    # the 1st-place recipe: grouped softmax, hard + random negatives, demonstrations, start from the retriever
    .venv-train/bin/python benchmarks/cross_encoder_real_data.py --run-dir runs/rd-base/unseen/ours --recipe \\
        --out benchmarks/results/cross_encoder_recipe_unseen.json

Input is an ``ours`` run that ``benchmarks/real_data.py`` leaves (default ``runs/bench-real/ours``): its
fold's candidates and, with ``--init retriever``, its fine-tuned fold retriever. The cross-encoder is
sentence-transformers' ``CrossEncoder`` (a BERT body with a new one-logit head) trained with
``CrossEncoderTrainer`` on the fold's labelled training pairs, with one of two losses:

* ``--loss bce``: ``BinaryCrossEntropyLoss``, each positive (query text, misconception) with ``--negatives``
  hard negatives drawn from the top ``--pool`` of the fold retriever's candidates for that training pair
  (``pos_weight`` = negatives, so positives and negatives weigh the same);
* ``--loss softmax``: each candidate is scored alone and a softmax cross-entropy is taken over the group of the
  positive, its ``--negatives`` hard negatives and ``--random-negatives`` other pairs' positives from the batch
  (sentence-transformers' cross-encoder ``MultipleNegativesRankingLoss``, on the raw logits).

``--demonstrations K`` attaches to a candidate up to K other training questions (and their wrong answer)
labelled with it: in training a random count from 0 to K, so the model also works on candidates without any,
as unseen misconceptions are; at scoring, K for every misconception with such a question, none for the rest.
``--recipe`` sets the 1st-place team's choices that fit 2 cores: softmax, 3 hard negatives from the top 32 plus
2 random ones, 1 demonstration, the run's fine-tuned retriever as the starting point.

It then scores the top ``--depth`` candidates of every validation pair and reorders them by
``eedi.rerank.moves.move`` (what ``reranker.kind: features`` may move): ``blend`` with weight ``w`` (``w`` x the
min-max scaled cross-encoder score + the rest x the retriever's, ``w`` = 0 being the retriever's own order),
``seen`` (only candidates seen in training move, among their own places) and ``top_k`` 5. Every row reports
MAP@25, the competition's mix (0.25 x seen + 0.75 x unseen), seen and unseen.

Writes the ``--out`` .json and .md (training loss curve, seconds per step, scoring pairs per second, metrics).
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

BLEND_WEIGHTS = (0.0, 0.2, 0.3, 0.5, 0.7, 1.0)
RECIPE = {
    "loss": "softmax",
    "negatives": 3,
    "pool": 32,
    "random_negatives": 2,
    "demonstrations": 1,
    "init": "retriever",
    "lr": 5e-5,
    "batch_size": 16,
    "max_length": 256,
}
DEMO_CHARS = 300


def render(record: dict) -> str:
    s, curve = record["settings"], record["loss_curve"]
    loss = f"{curve[0]['loss']:.3f} (step {curve[0]['step']}) -> {curve[-1]['loss']:.3f}" if curve else "-"
    negatives = f"{s['negatives']} hard negatives from the top {s.get('pool', 15)}"
    softmax = s.get("loss", "bce") == "softmax"
    unit = "groups" if softmax else "rows"
    if softmax:
        negatives += f" and {s.get('random_negatives', 0)} in-batch random ones, softmax over the group"
    lines = [
        f"MiniLM cross-encoder reranker, fold {record['fold']} of `{record['run_dir']}`, {record['machine']}, "
        f"CPU: {record['cpu']}.",
        "",
        f"`{record['command']}`",
        "",
        f"Starts from `{s.get('init', 'backbone')}`; {record['training_rows']} training {unit} ({negatives}; "
        f"up to {s.get('demonstrations', 0)} demonstrations a candidate), {record['steps']} steps of "
        f"{s['batch_size']} at lr {s['lr']} in {record['train_seconds']} s ({record['seconds_per_step']} s/step); "
        f"training loss {loss} (a constant prediction scores {record['constant_prediction_loss']}); scoring "
        f"{record['scored_pairs']} pairs at {record['scoring_pairs_per_second']} pairs/s. `blend w` = 0 is the "
        "retriever's own order, `blend w` = 1 the cross-encoder's alone.",
        "",
        "| reorder | MAP@25 (mix) | MAP@25 | recall@1 | recall@5 | MAP@25 seen | MAP@25 unseen |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, block in record["results"].items():
        keys = ("map@25_mix", "map@25", "recall@1", "recall@5", "map@25_seen", "map@25_unseen")
        cells = [f"{block[k]:.4f}" if k in block else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if record.get("loss_curve"):
        lines += ["", "Training loss: " + ", ".join(f"{e['step']}: {e['loss']:.3f}" for e in curve)]
    return "\n".join(lines)


def demonstration_texts(train) -> dict[int, list[tuple[int, str]]]:
    """Each misconception's labelled training questions as (QuestionId, short text)."""
    out: dict[int, list[tuple[int, str]]] = {}
    for row in train.itertuples(index=False):
        text = f"{row.QuestionText} Incorrect answer: {row.WrongAnswerText}"[:DEMO_CHARS]
        out.setdefault(int(row.MisconceptionId), []).append((int(row.QuestionId), text))
    return out


def candidate_text(name: str, demos: list[str]) -> str:
    return name + "".join(f"\nExample: {d}" for d in demos)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "bench-real" / "ours"))
    parser.add_argument("--backbone", default=str(REPO / "models" / "all-minilm-l6-v2"))
    parser.add_argument(
        "--init",
        choices=("backbone", "retriever"),
        default="backbone",
        help="start from --backbone or from the run's fine-tuned fold retriever",
    )
    parser.add_argument("--recipe", action="store_true", help="the 1st-place settings above (override the flags)")
    parser.add_argument("--loss", choices=("bce", "softmax"), default="bce")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--pool", type=int, default=15, help="hard negatives come from the retriever's top this-many")
    parser.add_argument("--random-negatives", type=int, default=0, help="softmax: in-batch random negatives")
    parser.add_argument("--demonstrations", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--depth", type=int, default=25)
    parser.add_argument("--max-train", type=int, default=None, help="cap on training pairs (a smoke test)")
    parser.add_argument("--out", default=str(RESULTS / "cross_encoder_real_data.json"))
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = parser.parse_args()
    if args.recipe:
        for key, value in RECIPE.items():
            setattr(args, key, value)
    if args.render:
        record = json.loads(Path(args.out).read_text())
        Path(args.out).with_suffix(".md").write_text(render(record) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    import pandas as pd
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MultipleNegativesRankingLoss

    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.rerank.moves import move

    started = time.time()
    run_dir = Path(args.run_dir)
    layout = RunLayout(run_dir)
    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    names = dict(zip(misconceptions["MisconceptionId"].astype(int), misconceptions["MisconceptionName"]))
    train, val = train_val_split(pairs, fold_table, args.fold)
    query = dict(zip(pairs["QuestionId_Answer"], pairs["QueryText"]))
    question_of = dict(zip(pairs["QuestionId_Answer"], pairs["QuestionId"].astype(int)))
    candidates = pd.read_parquet(layout.candidates(model_name(args.fold)))
    candidates = candidates.sort_values(["QuestionId_Answer", "rank"])
    demos = demonstration_texts(train)
    rng = np.random.default_rng(args.seed)

    def with_demos(misconception: int, question: int, count: int) -> str:
        if count == 0:  # no draw from rng, so runs without demonstrations sample the negatives they always did
            return names[misconception]
        others = [text for q, text in demos.get(misconception, []) if q != question]
        picked = rng.choice(len(others), size=min(count, len(others)), replace=False) if others else []
        return candidate_text(names[misconception], [others[i] for i in picked])

    def train_text(misconception: int, question: int) -> str:
        return with_demos(
            misconception, question, int(rng.integers(0, args.demonstrations + 1)) if args.demonstrations else 0
        )

    positives = dict(zip(train["QuestionId_Answer"], train["MisconceptionId"].astype(int)))
    groups = list(candidates[candidates["part"] == "train"].groupby("QuestionId_Answer", sort=True))
    if args.max_train:
        groups = groups[: args.max_train]
    columns = ["query", "positive", *(f"negative_{i}" for i in range(args.negatives))]
    rows: dict[str, list] = (
        {c: [] for c in columns} if args.loss == "softmax" else {"query": [], "text": [], "label": []}
    )
    for key, group in groups:
        positive, question = positives[key], question_of[key]
        pool = [m for m in group["MisconceptionId"].astype(int).tolist()[: args.pool] if m != positive]
        chosen = [int(m) for m in rng.choice(pool, size=min(args.negatives, len(pool)), replace=False)]
        if args.loss == "softmax":
            if len(chosen) < args.negatives:
                continue
            texts = [train_text(m, question) for m in (positive, *chosen)]
            for column, text in zip(columns, [query[key], *texts]):
                rows[column].append(text)
        else:
            for misconception, label in [(positive, 1.0), *((m, 0.0) for m in chosen)]:
                rows["query"].append(query[key])
                rows["text"].append(train_text(misconception, question))
                rows["label"].append(label)
    dataset = Dataset.from_dict(rows).shuffle(seed=args.seed)

    torch.manual_seed(args.seed)
    start_from = str(layout.retriever_model(model_name(args.fold))) if args.init == "retriever" else args.backbone
    model = CrossEncoder(start_from, num_labels=1, max_length=args.max_length, device="cpu")
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
        logging_steps=10,
        disable_tqdm=False,
    )
    if args.loss == "softmax":
        # The raw logits into the softmax, as the 1st-place ranker (the library's default squashes them first).
        loss = MultipleNegativesRankingLoss(model, num_negatives=args.random_negatives, scale=1.0, activation_fn=None)
        group_size = 1 + args.negatives + args.random_negatives
        constant = float(np.log(group_size))
    else:
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(args.negatives)))
        constant = float(2 * args.negatives * np.log(2) / (1 + args.negatives))
    trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    curve = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]

    top = candidates[(candidates["part"] == "val") & (candidates["rank"] < args.depth)].reset_index(drop=True)
    score_texts = [
        (query[key], with_demos(int(m), question_of[key], args.demonstrations))
        for key, m in zip(top["QuestionId_Answer"], top["MisconceptionId"])
    ]
    t0 = time.perf_counter()
    scores = model.predict(score_texts, batch_size=64, show_progress_bar=True)
    score_seconds = time.perf_counter() - t0
    top = top.assign(ce=np.asarray(scores, dtype=np.float64))

    keys = val["QuestionId_Answer"].tolist()
    actual = val["MisconceptionId"].astype(int).tolist()
    seen = set(train["MisconceptionId"].astype(int))
    by_pair = {k: g for k, g in top.groupby("QuestionId_Answer")}
    variants = [(f"blend w={w}", "blend", w) for w in BLEND_WEIGHTS] + [
        ("seen only", "seen", 0.0),
        ("top 5", "top_k", 0.0),
    ]
    results = {}
    for label, mode, weight in variants:
        ranked = []
        for key in keys:
            group = by_pair[key]
            ids = group["MisconceptionId"].astype(int).to_numpy()
            order, _ = move(
                mode, group["ce"].to_numpy(), group["score"].to_numpy(), np.isin(ids, list(seen)), 5, weight
            )
            ranked.append(ids[order])
        results[label] = metrics_block(actual, np.array(ranked), seen)
        logging.info("%s: MAP@25 %.4f, mix %.4f", label, results[label]["map@25"], results[label]["map@25_mix"])
    record = {
        "run_dir": str(run_dir),
        "fold": args.fold,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "run_dir", "render")},
        "training_rows": len(dataset),
        "steps": steps,
        "train_seconds": round(train_seconds),
        "seconds_per_step": round(train_seconds / max(steps, 1), 2),
        "scored_pairs": len(top),
        "scoring_pairs_per_second": round(len(top) / score_seconds, 1),
        "constant_prediction_loss": round(constant, 4),
        "loss_curve": curve,
        **machine_fields(started),
        "results": results,
    }
    write_results(args.out, record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
