#!/usr/bin/env python
"""A learned feature reranker over the real-data benchmark's candidates: does a cheap second stage pay on CPU?

    .venv-train/bin/python benchmarks/reranker_real_data.py [--run-dir runs/bench-real/ours] [--seeds 0 1 2]

Input is the ``ours`` run that ``benchmarks/real_data.py`` leaves in ``runs/bench-real/ours``: its fold
retrievers and ``candidates/fold_<k>.parquet`` (the pipeline's own top 100 per validation pair, label
memory and unseen prior included). Nothing is retrained there; this script only re-ranks the top
``--depth`` candidates of each validation pair.

The reranker is scikit-learn's ``HistGradientBoostingClassifier`` on per-(pair, candidate) features,
pointwise, ranked by its probability. Features:

* ``text``: the pipeline's retrieval score, its rank, gap to the pair's top score and z-score within the
  pair; the fold retriever's plain cosine; all-MiniLM-L6-v2 zero-shot cosine; TF-IDF cosine of the query
  and the misconception name; for the three similarities, their rank and gap to the best within the pair;
* ``text+labels``: adds what the fold's labelled training pairs say about the candidate: how many pairs
  carry it, how many of those share the query's construct and subject, whether it is seen at all, and the
  label memory (highest cosine between the query and a training query labelled with it, in the fold
  retriever's and the zero-shot model's space, each also as rank and gap within the pair).

Each reranker orders the candidates two ways: all of them by its probability, and "seen slots only", where
the unseen candidates keep the ranks the retriever gave them and only the seen ones are reordered among the
remaining places (so MAP@25 on unseen misconceptions is the retriever's, exactly).

Training rows are out of fold: fold k's reranker learns from the validation candidates of the other
benchmark folds, whose features come from retrievers that never saw those questions (candidates of a
fold's own training pairs are scored by a model trained on them and mislead the reranker). Seeds change
the gradient-boosting early-stopping split. Reported per fold and seed: MAP@25, recall@{1,5,25,100} and
the seen/unseen split, beside the retriever's own ranking of the same candidates; then mean and sample
standard deviation over folds, the gain over the retriever per fold, and its spread over seeds.

Writes benchmarks/results/reranker_real_data.json and .md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import HEADLINE, REPO, RESULTS, aggregate, machine_fields, metrics_block, write_results  # noqa: E402

SIMILARITIES = ("cos", "zero_shot_cos", "tfidf")
TEXT = ["score", "rank", "gap", "z", *SIMILARITIES, *(f"{s}_{k}" for s in SIMILARITIES for k in ("rank", "gap"))]
MEMORIES = ("memory", "zero_shot_memory")
LABELS = [
    "n_label",
    "n_construct",
    "n_subject",
    "seen",
    *MEMORIES,
    *(f"{m}_{k}" for m in MEMORIES for k in ("rank", "gap")),
]
FEATURE_SETS = {"text": TEXT, "text+labels": TEXT + LABELS}
# "all": the reranker orders all top-`depth` candidates; "seen slots": only the seen candidates, among the
# places the retriever gave them (unseen candidates keep their ranks).
MODES = ("all", "seen slots")
GBM = {"max_iter": 300, "learning_rate": 0.03, "max_leaf_nodes": 7, "min_samples_leaf": 50}


def fold_features(run_dir: Path, fold: int, depth: int, pairs, fold_table, misconceptions, zero_shot) -> tuple:
    """Features of the top ``depth`` candidates of fold ``fold``'s validation pairs, and the fold's split."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from eedi.config import RuntimeConfig
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.retrieval.model import encode_corpus, encode_queries, load_encoder
    from eedi.runtime import resolve

    layout = RunLayout(run_dir)
    train, val = train_val_split(pairs, fold_table, fold)
    cand = pd.read_parquet(layout.candidates(model_name(fold)))
    cand = cand[(cand["part"] == "val") & (cand["rank"] < depth)].sort_values(["QuestionId_Answer", "rank"])
    cand = cand.reset_index(drop=True)
    meta = val.set_index("QuestionId_Answer")
    row_of = {int(m): i for i, m in enumerate(misconceptions["MisconceptionId"])}
    m_rows = cand["MisconceptionId"].map(row_of).to_numpy()
    q_index = {k: i for i, k in enumerate(val["QuestionId_Answer"])}
    q_rows = cand["QuestionId_Answer"].map(q_index).to_numpy()
    names = misconceptions["MisconceptionName"].tolist()

    model = load_encoder(
        layout.retriever_model(model_name(fold)), resolve(RuntimeConfig(device="cpu", dtype="float32"))
    )
    q_emb = encode_queries(model, val["QueryText"].tolist(), 64)
    m_emb = encode_corpus(model, names, 64)
    t_emb = encode_queries(model, train["QueryText"].tolist(), 64)
    zq, zm = zero_shot(val["QueryText"].tolist())
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(names + train["QueryText"].tolist())
    tq, tm = vectorizer.transform(val["QueryText"]), vectorizer.transform(names)

    by_pair = cand.groupby("QuestionId_Answer")["score"]
    cand["gap"] = cand["score"] - by_pair.transform("max")
    cand["z"] = (cand["score"] - by_pair.transform("mean")) / (by_pair.transform("std") + 1e-6)
    cand["cos"] = np.einsum("ij,ij->i", q_emb[q_rows], m_emb[m_rows])
    cand["zero_shot_cos"] = np.einsum("ij,ij->i", zq[q_rows], zm[m_rows])
    cand["tfidf"] = np.asarray(tq[q_rows].multiply(tm[m_rows]).sum(axis=1)).ravel()
    for name in SIMILARITIES:
        group = cand.groupby("QuestionId_Answer")[name]
        cand[f"{name}_rank"] = group.rank(ascending=False)
        cand[f"{name}_gap"] = cand[name] - group.transform("max")

    labels = train["MisconceptionId"].astype(int)
    cand["n_label"] = cand["MisconceptionId"].map(labels.value_counts()).fillna(0).to_numpy()
    cand["seen"] = (cand["n_label"] > 0).astype(int)
    for column, feature in (("ConstructId", "n_construct"), ("SubjectId", "n_subject")):
        counts = train.assign(m=labels).groupby([column, "m"]).size()
        keys = zip(meta.loc[cand["QuestionId_Answer"], column].to_numpy(), cand["MisconceptionId"].astype(int))
        cand[feature] = [counts.get(key, 0) for key in keys]
    # Label memory: the best cosine between the query and a training query labelled with the candidate,
    # in the fold retriever's space and in the zero-shot model's.
    label_rows = {m: np.flatnonzero(labels.to_numpy() == m) for m in np.unique(labels)}
    zt, _ = zero_shot(train["QueryText"].tolist())
    for name, sims in (("memory", q_emb @ t_emb.T), ("zero_shot_memory", zq @ zt.T)):
        memory = np.full(len(cand), -1.0)
        for i, (q, m) in enumerate(zip(q_rows, cand["MisconceptionId"].astype(int))):
            rows = label_rows.get(m)
            if rows is not None:
                memory[i] = sims[q, rows].max()
        cand[name] = memory
        group = cand.groupby("QuestionId_Answer")[name]
        cand[f"{name}_rank"] = group.rank(ascending=False)
        cand[f"{name}_gap"] = cand[name] - group.transform("max")
    positives = dict(zip(val["QuestionId_Answer"], val["MisconceptionId"].astype(int)))
    cand["target"] = cand["MisconceptionId"].to_numpy() == cand["QuestionId_Answer"].map(positives).to_numpy()
    return cand, train, val


def system_name(features: str, mode: str) -> str:
    return f"retriever + feature reranker ({features}" + (", seen slots only)" if mode == "seen slots" else ")")


def seen_slots_order(frame: pd.DataFrame, probs: np.ndarray) -> np.ndarray:
    """A sort key that reorders only the seen candidates, among the places the retriever gave them: every
    unseen candidate keeps its rank, so unseen pairs keep their retriever MAP@25 exactly."""
    key = -frame["rank"].to_numpy(dtype=np.float64)
    seen = frame["seen"].to_numpy().astype(bool)
    for rows in frame.groupby("QuestionId_Answer").indices.values():
        slots = rows[seen[rows]]
        if len(slots) > 1:
            # The seen slots' keys, largest first, handed out in the order of the reranker's probabilities.
            key[slots[np.argsort(-probs[slots], kind="stable")]] = np.sort(key[slots])[::-1]
    return key


def ranked_lists(frame: pd.DataFrame, order: np.ndarray, keys: list[str]) -> np.ndarray:
    """Each pair's candidate ids sorted by ``order`` (descending, stable), in the order of ``keys``."""
    frame = frame.assign(order=order)
    lists = {
        key: group["MisconceptionId"].to_numpy()[np.argsort(-group["order"].to_numpy(), kind="stable")]
        for key, group in frame.groupby("QuestionId_Answer")
    }
    return np.array([lists[k] for k in keys])


def markdown(record: dict) -> str:
    lines = [
        f"Feature reranker over `{record['run_dir']}` (the real-data benchmark's `ours` run, folds "
        f"{record['folds']}), top {record['depth']} candidates, seeds {record['seeds']}, "
        f"{record['machine']}, CPU: {record['cpu']}.",
        "",
        f"`{record['command']}`",
        "",
        "| system | MAP@25 | recall@1 | recall@5 | recall@25 | MAP@25 seen | MAP@25 unseen "
        "| gain per fold (seed spread) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, system in record["systems"].items():
        agg = system["mean"]
        cells = [f"{agg[k]['mean']:.3f} ± {agg[k]['std']:.3f}" for k in HEADLINE if k != "recall@100"]
        gains = system.get("gain_per_fold")
        gain = ", ".join(f"{g:+.4f} (±{s:.4f})" for g, s in zip(gains, system["seed_std_per_fold"])) if gains else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gain} |")
    lines += ["", "Mean gain over the retriever (MAP@25, mean over folds of the seed means): "]
    lines[-1] += ", ".join(f"{n} {s['mean_gain']:+.4f}" for n, s in record["systems"].items() if "mean_gain" in s)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "bench-real" / "ours"))
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--depth", type=int, default=25)
    parser.add_argument("--backbone", default=str(REPO / "models" / "all-minilm-l6-v2"), help="zero-shot encoder")
    parser.add_argument("--out", default=str(RESULTS / "reranker_real_data.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if len(args.folds) < 2:
        parser.error("--folds: out-of-fold training needs at least 2 folds")

    from sentence_transformers import SentenceTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier

    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.retrieval.model import encode_corpus, encode_queries

    run_dir = Path(args.run_dir)
    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    encoder = SentenceTransformer(args.backbone, device="cpu")
    corpus = encode_corpus(encoder, misconceptions["MisconceptionName"].tolist(), 64)

    def zero_shot(texts):
        return encode_queries(encoder, texts, 64), corpus

    started = time.time()
    data = {}
    for fold in args.folds:
        logging.info("fold %d: features", fold)
        data[fold] = fold_features(run_dir, fold, args.depth, pairs, fold_table, misconceptions, zero_shot)

    systems: dict[str, dict] = {"retriever": {"folds": {}}}
    for name in FEATURE_SETS:
        for mode in MODES:
            systems[system_name(name, mode)] = {"folds": {}, "per_seed": {}}
    for fold, (cand, train, val) in data.items():
        keys = val["QuestionId_Answer"].tolist()
        actual = val["MisconceptionId"].astype(int).tolist()
        seen = set(train["MisconceptionId"].astype(int))
        base = metrics_block(actual, ranked_lists(cand, -cand["rank"].to_numpy(), keys), seen)
        systems["retriever"]["folds"][f"fold_{fold}"] = base
        others = pd.concat([data[j][0] for j in data if j != fold], ignore_index=True)
        for name, features in FEATURE_SETS.items():
            blocks: dict[str, list] = {mode: [] for mode in MODES}
            for seed in args.seeds:
                t0 = time.process_time()
                model = HistGradientBoostingClassifier(random_state=seed, **GBM)
                model.fit(others[features], others["target"])
                probs = model.predict_proba(cand[features])[:, 1]
                cpu = round(time.process_time() - t0, 1)
                for mode in MODES:
                    order = probs if mode == "all" else seen_slots_order(cand, probs)
                    block = metrics_block(actual, ranked_lists(cand, order, keys), seen)
                    block["cpu_seconds"] = cpu
                    blocks[mode].append(block)
                    systems[system_name(name, mode)]["per_seed"][f"fold_{fold}_seed_{seed}"] = block
            for mode, runs in blocks.items():
                system = systems[system_name(name, mode)]
                system["folds"][f"fold_{fold}"] = {
                    k: float(np.mean([b[k] for b in runs])) for k in (*HEADLINE, "cpu_seconds")
                }
                gain = np.mean([b["map@25"] for b in runs]) - base["map@25"]
                system.setdefault("gain_per_fold", []).append(round(float(gain), 4))
                spread = float(np.std([b["map@25"] for b in runs], ddof=1)) if len(runs) > 1 else 0.0
                system.setdefault("seed_std_per_fold", []).append(round(spread, 4))
                logging.info(
                    "fold %d: %s MAP@25 %.4f (retriever %.4f)",
                    fold,
                    system_name(name, mode),
                    system["folds"][f"fold_{fold}"]["map@25"],
                    base["map@25"],
                )
    for system in systems.values():
        system["mean"] = aggregate(system["folds"])
        if "gain_per_fold" in system:
            system["mean_gain"] = round(float(np.mean(system["gain_per_fold"])), 4)
    record = {
        "run_dir": str(run_dir),
        "folds": args.folds,
        "seeds": args.seeds,
        "depth": args.depth,
        "gbm": GBM,
        "feature_sets": FEATURE_SETS,
        **machine_fields(started),
        "systems": systems,
    }
    write_results(args.out, record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
