#!/usr/bin/env python
"""Label-free changes to the retrieval score, over fold models that ``real_data.py`` has trained, measured as
infer would use them: the profile's label memory, then the unseen boost fixed or calibrated.

    .venv-train/bin/python benchmarks/score_levers.py --levers contrast --work runs/rd-base \
        --fold-kinds unseen group --folds 0 [--data ../shared/eedi-dev] [--config configs/cpu-kaggle.yaml] \
        [--out benchmarks/results/score_levers_question_contrast.json] [key=value ...]

Levers (``--levers``):

* **contrast**: each wrong answer against the other wrong answers of its own question. A question's wrong
  answers share their construct, subject and question text, so a retriever gives them nearly the same
  candidates: on unseen-rich fold 0 the top-1 misconception is the same for two wrong answers of one question
  in 267 of 291 questions, where the labels share one in 31 % (367 of 1,168 questions with two labelled wrong
  answers). The contrast keeps the part of the match that belongs to one wrong answer alone: for wrong answer
  i of question Q, score'(i, m) = score(i, m) - gamma x agg_{j in Q, j != i} score(j, m), over every wrong
  answer j of Q (labelled or not: test.csv gives all of them), agg the mean or the max.
* **adaptive**: an unseen boost that depends on the row. A row whose nearest training question is a
  near-copy most likely carries that question's (seen) misconception; a row far from every training question
  is where an unseen one is likelier. Every unseen misconception of row i loses c x n_i, n_i = the cosine of
  the row's nearest training query, before the one boost is calibrated: the calibration still sets how many
  rows rank an unseen misconception first, and the memory decides which.
* **sibling**: the label memory lent to unseen misconceptions. The memory raises a seen misconception M when a
  training question labelled M is near the query; an unseen misconception U that is worded like M (a sibling:
  "adds the numerators" beside "adds the denominators") is raised the same way, scaled by how alike they are:
  score'(q, U) = score(q, U) + knn_weight x max_M s(U, M) x max(0, memory(q, M) - cos(q, U)), with
  s(U, M) = max(0, (cos(U, M) - tau) / (1 - tau)) between the misconception names, over the query's recalled M.

Reported per fold kind: all validation pairs with the fixed ``index.unseen_boost`` (MAP@25, its mix, seen,
unseen), and the subsets composed like the test (every unseen pair, seen pairs sampled down to 1:3, seeds 0-2;
the questions that carry an unseen label) with the boost calibrated to ``index.unseen_top1_share``. Written to
``--out`` (.json and .md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import (  # noqa: E402
    FOLD_KINDS,
    REPO,
    RESULTS,
    by_setting,
    machine_fields,
    metrics_block,
    prepared_run,
    test_like_subsets,
    write_results,
)

LEVERS = {
    "contrast": [
        ("mean", 0.25),
        ("mean", 0.5),
        ("mean", 0.75),
        ("mean", 1.0),
        ("max", 0.25),
        ("max", 0.5),
        ("max", 1.0),
    ],
    "sibling": [(0.5, 1.0), (0.6, 1.0), (0.7, 1.0), (0.8, 1.0), (0.7, 0.5), (0.7, 2.0)],
    "adaptive": [0.1, 0.25, 0.5, 1.0],
}
"""contrast: (agg, gamma); sibling: (tau, weight on the lent raise); adaptive: c."""


def question_contrast(scores: np.ndarray, question_ids: np.ndarray, gamma: float, agg: str = "mean") -> np.ndarray:
    """``scores`` (rows, corpus) less gamma x the mean (or max) score of the other rows of the same question.
    A row alone in its question keeps its scores."""
    out = scores.copy()
    for question in np.unique(question_ids):
        rows = np.flatnonzero(question_ids == question)
        if len(rows) < 2:
            continue
        block = scores[rows]
        for position, row in enumerate(rows):
            others = np.delete(block, position, axis=0)
            reference = others.mean(axis=0) if agg == "mean" else others.max(axis=0)
            out[row] = block[position] - gamma * reference
    return out


def sibling_memory(
    scores: np.ndarray,
    cosines: np.ndarray,
    recalled: list[dict[int, float]],
    likeness: np.ndarray,
    column: dict[int, int],
    unseen: np.ndarray,
    weight: float,
) -> np.ndarray:
    """``scores`` with every unseen misconception U raised by weight x max_M likeness[U, M] x max(0, memory(q, M)
    - cos(q, U)) over the query's recalled labels M (``likeness``: (corpus, corpus), 0 where unalike)."""
    out = scores.copy()
    unseen_columns = np.flatnonzero(unseen)
    for i, labels in enumerate(recalled):
        if not labels:
            continue
        columns = np.array([column[m] for m in labels])
        memory = np.fromiter(labels.values(), dtype=np.float32, count=len(labels))
        # (unseen, recalled): how much each recalled label would raise each unseen sibling
        lent = likeness[np.ix_(unseen_columns, columns)] * np.maximum(
            0.0, memory[None, :] - cosines[i, unseen_columns][:, None]
        )
        out[i, unseen_columns] += weight * lent.max(axis=1)
    return out


def top1_shared(top1: np.ndarray, question_ids: np.ndarray) -> float:
    """Share of the questions with two or more rows whose rows' top-1 predictions repeat one another."""
    shared = total = 0
    for question in np.unique(question_ids):
        picks = top1[question_ids == question]
        if len(picks) > 1:
            total += 1
            shared += len(set(picks.tolist())) < len(picks)
    return shared / total if total else 0.0


def measure_fold(
    cfg, run_dir: Path, fold: int, placement, levers: list[str], max_length: int | None = None
) -> dict[str, dict[str, dict]]:
    """{setting: {subset: metrics}} for one fold; ``max_length``: encode queries and misconceptions with this
    token limit instead of the one the model trained with."""
    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.retrieval.model import encode_queries, load_encoder
    from eedi.retrieval.search import CandidateRetriever, calibrate_unseen_boost, top_k_from_scores

    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    train, val = train_val_split(pairs, fold_table, fold)
    # every wrong answer of the validation questions, labelled or not, in pairs' order; val's rows among them
    val_questions = set(val["QuestionId"].tolist())
    context = pairs[(pairs["split"] == "train") & pairs["QuestionId"].isin(val_questions)].reset_index(drop=True)
    position = {key: i for i, key in enumerate(context["QuestionId_Answer"])}
    labelled_rows = np.array([position[k] for k in val["QuestionId_Answer"]])
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    actual = val["MisconceptionId"].astype(int).tolist()
    seen = set(train["MisconceptionId"].astype(int))
    subsets = test_like_subsets(val, seen)
    subsets["all validation pairs, fixed boost"] = np.arange(len(val))
    share = cfg.index.unseen_top1_share or 0.75
    model = load_encoder(RunLayout(run_dir).retriever_model(model_name(fold)), placement)
    if max_length:
        model.max_seq_length = max_length
    retriever = CandidateRetriever(model, misconceptions, cfg, train)
    queries = encode_queries(model, context["QueryText"].tolist(), cfg.retriever.encode_batch_size)
    dense = retriever.dense_scores(queries)
    question_ids = context["QuestionId"].to_numpy()
    logging.info(
        "fold %d: %d wrong answers of %d questions (%d labelled)", fold, len(context), len(val_questions), len(val)
    )

    settings = {"profile": lambda: dense}
    if "contrast" in levers:
        for agg, gamma in LEVERS["contrast"]:
            settings[f"contrast {agg}, gamma {gamma:g}"] = lambda a=agg, g=gamma: question_contrast(
                dense, question_ids, g, a
            )
    if "sibling" in levers:
        cosines = queries @ retriever.documents.T
        recalled = retriever._recall(queries, None)
        names = retriever.documents @ retriever.documents.T
        np.fill_diagonal(names, 0.0)
        for tau, weight in LEVERS["sibling"]:
            likeness = np.maximum(0.0, (names - tau) / (1 - tau)).astype(np.float32)
            settings[f"sibling memory, tau {tau:g}, weight {weight:g}"] = lambda lk=likeness, w=weight: sibling_memory(
                dense, cosines, recalled, lk, retriever.column, retriever.unseen, w * cfg.index.knn_weight
            )

    if "adaptive" in levers:
        nearest = np.array([max(labels.values(), default=0.0) for labels in retriever._recall(queries, None)])
        for c in LEVERS["adaptive"]:
            settings[f"adaptive boost, c {c:g}"] = lambda c=c: dense - c * nearest[:, None] * retriever.unseen[None, :]

    out: dict[str, dict[str, dict]] = {}
    for name, compute in settings.items():
        started = time.time()
        scores = compute()[labelled_rows]
        for subset, rows in subsets.items():
            if subset.startswith("all"):
                boost = cfg.index.unseen_boost
            else:
                boost = calibrate_unseen_boost(scores[rows], retriever.unseen, share)
            ranked = top_k_from_scores(scores[rows] + boost * retriever.unseen, corpus_ids, 100)[1]
            block = metrics_block([actual[i] for i in rows], ranked, seen)
            block["boost"] = round(float(boost), 4)
            block["top1_shared"] = top1_shared(ranked[:, 0], val["QuestionId"].to_numpy()[rows])
            out.setdefault(name, {})[subset] = block
        logging.info("fold %d: %s measured in %.0f s", fold, name, time.time() - started)
    return out


def markdown(record: dict) -> str:
    lines = [
        f"Score levers {record['levers']} (encoding length: {record.get('max_length') or 'as trained'}) over "
        f"the fold models of `{record['work']}` (folds {record['folds']}, config "
        f"`{record['config']}` {' '.join(record['overrides'])}; {record['machine']}; CPU: {record['cpu']}).".replace(
            "  ", " "
        ),
        f"All = every validation pair, fixed `index.unseen_boost`; 1:3 = every unseen pair and seen pairs sampled "
        f"down to 1 seen : 3 unseen (mean of seeds 0-2), unseen boost calibrated to share {record['share']:g}; "
        "Q = the questions that carry an unseen label, calibrated. Shared top-1 = share of questions whose "
        "labelled rows repeat a top-1 prediction (all pairs).",
    ]
    for kind, settings in record["kinds"].items():
        lines += [
            "",
            f"### {kind} folds",
            "",
            "| setting | all: mix | all: MAP@25 | all: seen | all: unseen | shared top-1 | 1:3 MAP@25 | 1:3 seen | "
            "1:3 unseen | Q MAP@25 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, per_subset in settings.items():
            seeds = [per_subset[s]["mean"] for s in per_subset if s.startswith("1:3")]

            def mean(key: str, seeds=seeds) -> float:
                return float(np.mean([s[key]["mean"] for s in seeds]))

            everything = per_subset["all validation pairs, fixed boost"]
            full = everything["mean"]
            shared = np.mean([f["top1_shared"] for f in everything["folds"].values()])
            q = per_subset["questions with an unseen label"]["mean"]["map@25"]["mean"]
            lines.append(
                f"| {name} | {full['map@25_mix']['mean']:.3f} | {full['map@25']['mean']:.3f} | "
                f"{full['map@25_seen']['mean']:.3f} | {full['map@25_unseen']['mean']:.3f} | {shared:.2f} | "
                f"{mean('map@25'):.3f} | {mean('map@25_seen'):.3f} | {mean('map@25_unseen'):.3f} | {q:.3f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="*", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--work", required=True, help="the --work folder of a real_data.py run with system ours")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eedi-dev"))
    parser.add_argument("--config", default="configs/cpu-kaggle.yaml")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--fold-kinds", nargs="+", default=list(FOLD_KINDS), choices=FOLD_KINDS)
    parser.add_argument("--out", default=str(RESULTS / "score_levers.json"))
    parser.add_argument("--max-length", type=int, help="encode with this token limit (default: the model's own)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    from eedi.config import RuntimeConfig, load_config
    from eedi.runtime import resolve

    started = time.time()
    cfg = load_config(REPO / args.config, [f"data.dir={Path(args.data).resolve()}", *args.overrides, "index.top_k=100"])
    placement = resolve(RuntimeConfig(device="cpu", dtype="float32"))
    record = {
        "levers": args.levers,
        "max_length": args.max_length,
        "work": args.work,
        "config": args.config,
        "overrides": args.overrides,
        "folds": args.folds,
        "share": cfg.index.unseen_top1_share or 0.75,
        "kinds": {},
    }
    for kind in args.fold_kinds:
        run_dir = prepared_run(parser, args.work, kind)
        per_fold = {
            f"fold_{f}": measure_fold(cfg, run_dir, f, placement, args.levers, args.max_length) for f in args.folds
        }
        record["kinds"][kind] = by_setting(per_fold)
        record.update(machine_fields(started))
        write_results(args.out, record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
