#!/usr/bin/env python
"""Cross-validated benchmark on real competition data: baselines and the pipeline, side by side.

    .venv-train/bin/python benchmarks/real_data.py [--data ../shared/eedi-dev] [--config configs/cpu-kaggle.yaml]
        [--folds 0 1 2] [--systems tfidf minilm-zero-shot mnrl ours ...] [key=value ...]

Every system is measured on the same folds of the project's own ``folds.csv`` (GroupKFold by question,
``eedi prepare``), on this machine, in one run:

* ``tfidf`` - TF-IDF (word 1-2 grams, sublinear tf) of the query text against the misconception names;
* ``minilm-zero-shot`` - the retriever's backbone as it comes from PyPI, no training;
* ``mnrl`` - the plain sentence-transformers fine-tune a user would pick first: (query, misconception name)
  pairs, ``MultipleNegativesRankingLoss``, the ``NO_DUPLICATES`` batch sampler, and the *same* backbone,
  query texts, epochs, batch size, learning rate, warm-up and max length as ours;
* ``ours`` - the pipeline's own stages (``prepare``, ``train-retriever``, ``index``) under the config;
* further variants of ours (``VARIANTS`` below: without the retrieval prior, with synthetic rows, with a
  reranker), each the same stages with a few config overrides.

Reported per system and fold: MAP@25, recall@{1,5,25,100}, MAP@25 on misconceptions seen / unseen in
the fold's training part, and CPU seconds (training and scoring; per pipeline stage for ours). Then the
mean and sample standard deviation over the folds. Written to ``benchmarks/results/real_data.json`` and
``.md``; the README's and docs/results.md's real-data tables are that file's table.

Second stages over this benchmark's ``ours`` run (its fold retrievers and candidates), each in its own script
so that they reuse those models: ``reranker_real_data.py`` (a learned feature reranker, 3 folds x 3 seeds),
``cross_encoder_real_data.py`` (a MiniLM cross-encoder, one fold) and ``synthetic_real_data.py`` (SmolLM2-135M
questions for a fold's unseen misconceptions, retrained).

The CPU seconds of a stage are those of its process and its children (``getrusage``): on 2 cores a stage
that keeps both busy spends about twice its wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HEADLINE = ("map@25_mix", "map@25", "map@25_seen", "map@25_unseen", "recall@1", "recall@5", "recall@25", "recall@100")
# Two kinds of fold, each measured in one run: question-grouped folds (about a quarter of the validation pairs
# carry a misconception unseen in training) and folds.mode=unseen folds (folds.unseen_share=0.3 of the
# misconceptions held out of training: 51-60 % unseen validation pairs in folds 0-2), closer to the
# competition's test set (about 3 unseen pairs to 1 seen).
FOLD_KINDS = ("group", "unseen")
BASELINES = ("tfidf", "minilm-zero-shot", "mnrl")
# name -> (stages, overrides on top of the benchmark's config). "ours" is the config as it is.
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ours": (("prepare", "train-retriever", "index"), ()),
    "ours+synthetic": (
        ("prepare", "synthesize", "train-retriever", "index"),
        ("synthetic.enabled=true", "synthetic.use=true"),
    ),
    "ours+reranker": (("prepare", "train-retriever", "index", "train-reranker"), ()),
}
INFER_SIDE = {"synthesize"}


def cpu_flags() -> str:
    flags = set(re.findall(r"avx512[a-z_0-9]*", Path("/proc/cpuinfo").read_text()))
    return ("AVX-512 (" + " ".join(sorted(flags)) + ")") if flags else "AVX2 only (no AVX-512)"


def machine_fields(started: float) -> dict:
    """The record fields every benchmark here writes: machine, CPU vector units, wall time, command line."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "cpu": cpu_flags(),
        "wall_seconds": round(time.time() - started),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def write_results(out: str | Path, record: dict, table: str) -> None:
    """``out`` (.json) and its .md twin, then the table on stdout."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def metrics_block(actual: list[int], ranked: np.ndarray, seen_ids: set[int]) -> dict:
    from eedi.evaluation.metrics import ranking_metrics

    return ranking_metrics(actual, ranked.tolist(), seen=[a in seen_ids for a in actual], recall_ks=(1, 5, 25, 100))


# --------------------------------------------------------------------------- baselines


def tfidf_ranking(train, val, corpus_ids, corpus_texts) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from eedi.retrieval.search import top_k_from_scores

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    vectorizer.fit(list(corpus_texts) + train["QueryText"].tolist())
    scores = (vectorizer.transform(val["QueryText"]) @ vectorizer.transform(corpus_texts).T).toarray()
    return top_k_from_scores(scores, corpus_ids, 100)[1]


def encoder_ranking(model, val, corpus_ids, corpus_texts, batch_size: int) -> np.ndarray:
    from eedi.retrieval.model import encode_corpus, encode_queries
    from eedi.retrieval.search import top_k_from_scores

    scores = (
        encode_queries(model, val["QueryText"].tolist(), batch_size) @ encode_corpus(model, corpus_texts, batch_size).T
    )
    return top_k_from_scores(scores, corpus_ids, 100)[1]


# Retrieval-time terms of eedi.retrieval.search.CandidateRetriever, switched on and off over one trained model.
ABLATIONS = {
    "cosine only": ("index.knn_weight=0.0", "index.unseen_boost=0.0"),
    "+ unseen prior": ("index.knn_weight=0.0",),
    "+ label memory": ("index.unseen_boost=0.0",),
    "+ memory + prior": (),
}


def fused_ranking(model, cfg_path: str, overrides: list[str], train, val, misconceptions) -> np.ndarray:
    """The pipeline's own retrieval (label memory and prior per the config) over ``model``."""
    from eedi.config import load_config
    from eedi.retrieval.search import CandidateRetriever

    cfg = load_config(REPO / cfg_path, [*overrides, "index.top_k=100"])
    return CandidateRetriever(model, misconceptions, cfg, train).search(val["QueryText"].tolist())[1]


def run_ablations(
    base: str, cfg_path: str, overrides: list[str], run_dir: Path, folds: list[int], models: dict | None = None
) -> dict[str, dict]:
    """Per-fold metrics of each ABLATIONS row, over ``models`` (fold -> model) or else the fold models
    that ``run_dir`` holds; pairs and folds come from ``run_dir``."""
    from eedi.config import RuntimeConfig
    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.retrieval.model import load_encoder
    from eedi.runtime import resolve

    placement = resolve(RuntimeConfig(device="cpu", dtype="float32"))
    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    out: dict[str, dict] = {f"{base} {name}": {} for name in ABLATIONS}
    for fold in folds:
        train, val = train_val_split(pairs, fold_table, fold)
        if models is not None:
            model = models[fold]
        else:
            model = load_encoder(RunLayout(run_dir).retriever_model(model_name(fold)), placement)
        seen = set(train["MisconceptionId"].astype(int))
        for name, extra in ABLATIONS.items():
            ranked = fused_ranking(model, cfg_path, [*overrides, *extra], train, val, misconceptions)
            out[f"{base} {name}"][f"fold_{fold}"] = metrics_block(
                val["MisconceptionId"].astype(int).tolist(), ranked, seen
            )
    return out


# --------------------------------------------------------------------------- retrieval-time levers

# Fixed unseen boosts, and zero-shot fusion for unseen candidates: the fine-tuned model has moved the seen
# misconceptions only, so an unseen one is scored by (1 - beta) x fine-tuned cosine + beta x the backbone's own
# zero-shot cosine, plus the boost.
BOOSTS = (0.0, 0.03, 0.06, 0.09, 0.12, 0.15, 0.2, 0.25, 0.3)
FUSION_BETAS = (0.25, 0.5, 0.75)
FUSION = tuple((beta, boost) for beta in FUSION_BETAS for boost in (0.06, 0.12))
# Label-free calibration (index.unseen_top1_share) is measured on validation sets composed like the test.
TOP1_SHARES = (0.5, 0.6, 0.75)
# The label memory votes for seen misconceptions only; under the calibrated boost its weight is re-measured
# (share 0.75), since the boost now answers for whatever the memory takes from the unseen ones.
MEMORY_WEIGHTS = (0.0, 0.2, 0.4, 0.6)
CALIBRATED_SHARE = 0.75
SUBSET_SEEDS = (0, 1, 2)


def test_like_subsets(val, seen_ids: set[int]) -> dict[str, np.ndarray]:
    """Row indices of ``val`` composed like the competition's test: every unseen pair plus seen pairs sampled
    down to 1 seen : 3 unseen (one subset per seed), and the rows of the questions that carry an unseen
    misconception (all their wrong answers)."""
    labels = val["MisconceptionId"].astype(int).to_numpy()
    unseen_rows = np.flatnonzero(~np.isin(labels, list(seen_ids)))
    seen_rows = np.flatnonzero(np.isin(labels, list(seen_ids)))
    out = {}
    for seed in SUBSET_SEEDS:
        take = min(len(seen_rows), len(unseen_rows) // 3)
        sampled = np.random.default_rng(seed).choice(seen_rows, size=take, replace=False)
        out[f"1:3 seed {seed}"] = np.sort(np.concatenate([unseen_rows, sampled]))
    questions = set(val["QuestionId"].to_numpy()[unseen_rows].tolist())
    out["questions with an unseen label"] = np.flatnonzero(val["QuestionId"].isin(questions).to_numpy())
    return out


def run_levers(cfg_path: str, overrides: list[str], run_dir: Path, folds: list[int]) -> tuple[dict, dict]:
    """Over the fold models of ``run_dir``: per-fold metrics of each fixed boost and fusion setting (systems),
    and on the test-like subsets the fixed ``index.unseen_boost`` against label-free calibration."""
    from eedi.config import RuntimeConfig, load_config
    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.layout import RunLayout, model_name
    from eedi.retrieval.model import build_model, encode_corpus, encode_queries, load_encoder
    from eedi.retrieval.search import CandidateRetriever, calibrate_unseen_boost, top_k_from_scores
    from eedi.runtime import resolve

    placement = resolve(RuntimeConfig(device="cpu", dtype="float32"))
    cfg = load_config(REPO / cfg_path, [*overrides, "index.top_k=100"])
    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    names, batch = misconceptions["MisconceptionName"].tolist(), cfg.retriever.encode_batch_size
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    zero_shot = build_model(cfg.retriever, placement, trainable=False)
    zero_shot_docs = encode_corpus(zero_shot, names, batch)
    systems: dict[str, dict] = {}
    calibration: dict[str, dict] = {}

    def ranked(scores: np.ndarray) -> np.ndarray:
        return top_k_from_scores(scores, corpus_ids, 100)[1]

    for fold in folds:
        train, val = train_val_split(pairs, fold_table, fold)
        model = load_encoder(RunLayout(run_dir).retriever_model(model_name(fold)), placement)
        retriever = CandidateRetriever(model, misconceptions, cfg, train)
        queries = encode_queries(model, val["QueryText"].tolist(), batch)
        dense, unseen = retriever.dense_scores(queries), retriever.unseen
        fine_tuned_cos = queries @ retriever.documents.T
        zero_shot_cos = encode_queries(zero_shot, val["QueryText"].tolist(), batch) @ zero_shot_docs.T
        actual = val["MisconceptionId"].astype(int).tolist()
        seen = set(train["MisconceptionId"].astype(int))
        settings = {f"ours boost {b:g}": dense + b * unseen for b in BOOSTS}
        for beta, b in FUSION:
            fused = dense + unseen * (beta * (zero_shot_cos - fine_tuned_cos) + b)
            settings[f"ours zero-shot fusion beta {beta:g} boost {b:g}"] = fused
        for name, scores in settings.items():
            systems.setdefault(name, {})[f"fold_{fold}"] = metrics_block(actual, ranked(scores), seen)
        memory_dense = {
            w: CandidateRetriever(
                model, misconceptions, with_memory_weight(cfg, w), train, store=retriever.store
            ).dense_scores(queries)
            for w in MEMORY_WEIGHTS
            if w != cfg.index.knn_weight
        }
        for subset, rows in test_like_subsets(val, seen).items():
            sub_actual = [actual[i] for i in rows]
            rules = {"fixed index.unseen_boost": (dense, cfg.index.unseen_boost)}
            for share in TOP1_SHARES:
                rules[f"calibrated unseen_top1_share {share:g}"] = (
                    dense,
                    calibrate_unseen_boost(dense[rows], unseen, share),
                )
            for beta in FUSION_BETAS:
                fused = dense + unseen * beta * (zero_shot_cos - fine_tuned_cos)
                rules[f"calibrated unseen_top1_share {CALIBRATED_SHARE:g}, zero-shot fusion beta {beta:g}"] = (
                    fused,
                    calibrate_unseen_boost(fused[rows], unseen, CALIBRATED_SHARE),
                )
            for w, scores in memory_dense.items():
                rules[f"calibrated unseen_top1_share {CALIBRATED_SHARE:g}, knn_weight {w:g}"] = (
                    scores,
                    calibrate_unseen_boost(scores[rows], unseen, CALIBRATED_SHARE),
                )
            for rule, (scores, boost) in rules.items():
                block = metrics_block(sub_actual, ranked(scores[rows] + boost * unseen), seen)
                block["boost"] = round(float(boost), 4)
                calibration.setdefault(rule, {}).setdefault(subset, {})[f"fold_{fold}"] = block
        logging.info("fold %d: levers measured", fold)
    return systems, calibration


def with_memory_weight(cfg, weight: float):
    """``cfg`` with ``index.knn_weight`` set to ``weight``."""
    return cfg.model_copy(update={"index": cfg.index.model_copy(update={"knn_weight": weight})})


def train_mnrl(cfg, train, corpus_ids, corpus_texts, out_dir: Path):
    """The plain recipe a user would pick: MNRL on (query, positive) pairs, no duplicates in a batch."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from eedi.retrieval.model import build_model
    from eedi.runtime import resolve

    rc = cfg.retriever
    placement = resolve(cfg.runtime)
    model = build_model(rc, placement)
    texts = dict(zip(corpus_ids.tolist(), corpus_texts))
    dataset = Dataset.from_dict(
        {"anchor": train["QueryText"].tolist(), "positive": [texts[int(m)] for m in train["MisconceptionId"]]}
    )
    steps = max(1, -(-len(dataset) // rc.batch_size)) * rc.epochs
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=rc.epochs,
        per_device_train_batch_size=rc.batch_size,
        learning_rate=rc.lr,
        warmup_steps=int(round(rc.warmup_ratio * steps)),
        lr_scheduler_type="linear",
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        use_cpu=not placement.is_cuda,
        bf16=placement.is_cuda,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        logging_steps=20,
        disable_tqdm=True,
        prompts={"anchor": model.prompts["query"]} if model.prompts.get("query") else None,
    )
    SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model)
    ).train()
    return model


def run_baselines(cfg, run_dir: Path, folds: list[int], systems: list[str], work: Path) -> dict:
    import torch

    from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
    from eedi.data.folds import train_val_split
    from eedi.retrieval.model import build_model
    from eedi.runtime import resolve

    pairs, fold_table, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    corpus_ids = misconceptions["MisconceptionId"].to_numpy(np.int64)
    corpus_texts = misconceptions["MisconceptionName"].tolist()
    batch = cfg.retriever.encode_batch_size
    out: dict[str, dict] = {name: {} for name in systems if name in BASELINES}
    mnrl_models: dict[int, object] = {}
    for fold in folds:
        train, val = train_val_split(pairs, fold_table, fold)
        actual = val["MisconceptionId"].astype(int).tolist()
        seen = set(train["MisconceptionId"].astype(int))
        for name in out:
            logging.info("fold %d: %s", fold, name)
            t0, cpu0 = time.perf_counter(), time.process_time()
            if name == "tfidf":
                ranked = tfidf_ranking(train, val, corpus_ids, corpus_texts)
            elif name == "minilm-zero-shot":
                model = build_model(cfg.retriever, resolve(cfg.runtime), trainable=False)
                ranked = encoder_ranking(model, val, corpus_ids, corpus_texts, batch)
            else:
                torch.manual_seed(cfg.seed)
                model = train_mnrl(cfg, train, corpus_ids, corpus_texts, work / f"mnrl_fold_{fold}")
                mnrl_models[fold] = model
                train_cpu = time.process_time() - cpu0
                ranked = encoder_ranking(model, val, corpus_ids, corpus_texts, batch)
            block = metrics_block(actual, ranked, seen)
            block["cpu_seconds"] = round(time.process_time() - cpu0, 1)
            block["wall_seconds"] = round(time.perf_counter() - t0, 1)
            if name == "mnrl":
                block["train_cpu_seconds"] = round(train_cpu, 1)
            out[name][f"fold_{fold}"] = block
            logging.info("fold %d: %s MAP@25 %.4f", fold, name, block["map@25"])
    return out, mnrl_models


# --------------------------------------------------------------------------- the pipeline


def _reusable(run_dir: Path, folds: list[int], key: str) -> bool:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return False
    metrics = json.loads(metrics_path.read_text())
    return all(key in metrics.get(f"fold_{fold}", {}) for fold in folds)


def run_variant(
    name: str, config: str, overrides: list[str], folds: list[int], work: Path, reuse: bool = False
) -> dict:
    """The pipeline's stages for one variant, each in its own process; metrics from its metrics.json.
    ``reuse``: a run directory that already holds every fold's metrics (and so its models) is not retrained;
    its stage times are then the wall seconds its manifest recorded."""
    stages, extra = VARIANTS[name]
    run_dir = work / name
    key = "reranker" if "train-reranker" in stages else "retriever"
    if reuse and _reusable(run_dir, folds, key):
        logging.info("%s: reusing %s", name, run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        manifest = json.loads((run_dir / "manifest.json").read_text())
        wall = {s: manifest["stages"][s]["seconds"] for s in stages if s in manifest.get("stages", {})}
        out = {f"fold_{fold}": dict(metrics[f"fold_{fold}"][key]) for fold in folds}
        for block in out.values():
            block["wall_seconds"] = round(sum(wall.values()) / len(folds), 1)
        return {"folds": out, "stage_wall_seconds": wall, "reused": True}
    args = [
        "--config",
        config,
        *overrides,
        *extra,
        f"run_dir={run_dir}",
        f"folds.use={list(folds)}",
        "folds.full_fit=false",
    ]
    train_python = os.environ.get("EEDI_TRAIN_PYTHON") or sys.executable
    infer_python = os.environ.get("EEDI_INFER_PYTHON") or str(REPO / ".venv-infer" / "bin" / "python")
    stage_cpu: dict[str, float] = {}
    stage_wall: dict[str, float] = {}
    for stage in stages:
        python = infer_python if stage in INFER_SIDE else train_python
        logging.info("%s: stage %s", name, stage)
        cpu0, t0 = children_cpu_seconds(), time.perf_counter()
        result = subprocess.run(
            [python, "-m", "eedi", stage, "--force", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(work / f"{name}.{stage}.log", "w"),
        )
        if result.returncode:
            raise SystemExit(
                f"{name}: stage {stage} failed (exit {result.returncode}); see {work / f'{name}.{stage}.log'}"
            )
        stage_cpu[stage] = round(children_cpu_seconds() - cpu0, 1)
        stage_wall[stage] = round(time.perf_counter() - t0, 1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {}
    for fold in folds:
        block = dict(metrics[f"fold_{fold}"][key])
        out[f"fold_{fold}"] = block
    # Stages run all folds in one process: their CPU seconds are per run, shown per fold as the mean.
    for block in out.values():
        block["stage_cpu_seconds_per_fold"] = {s: round(c / len(folds), 1) for s, c in stage_cpu.items()}
        block["cpu_seconds"] = round(sum(stage_cpu.values()) / len(folds), 1)
    return {"folds": out, "stage_cpu_seconds": stage_cpu, "stage_wall_seconds": stage_wall}


# --------------------------------------------------------------------------- report


def aggregate(per_fold: dict[str, dict]) -> dict:
    out = {}
    for key in (*HEADLINE, "cpu_seconds", "wall_seconds", "boost"):
        values = [b[key] for b in per_fold.values() if key in b]
        if values:
            out[key] = {
                "mean": round(float(np.mean(values)), 4),
                "std": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else 0.0,
                "min": round(float(np.min(values)), 4),
                "max": round(float(np.max(values)), 4),
            }
    return out


def by_setting(per_fold: dict[str, dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """{fold: {setting: {subset: metrics}}} -> {setting: {subset: {"folds": {fold: metrics}, "mean": aggregate}}}."""
    settings = next(iter(per_fold.values()))
    return {
        name: {
            subset: {
                "folds": {fold: per_fold[fold][name][subset] for fold in per_fold},
                "mean": aggregate({fold: per_fold[fold][name][subset] for fold in per_fold}),
            }
            for subset in settings[name]
        }
        for name in settings
    }


def prepared_run(parser: argparse.ArgumentParser, work: str, kind: str) -> Path:
    """The ``ours`` run of one fold kind under a ``--work`` folder of this script; a usage error when missing."""
    from eedi.layout import RunLayout

    run_dir = Path(work) / kind / "ours"
    if not RunLayout(run_dir).folds.is_file():
        parser.error(f"{run_dir} holds no prepared run: run real_data.py --systems ours --work {work} first")
    return run_dir


def _cell(agg: dict, key: str) -> str:
    return f"{agg[key]['mean']:.3f} ± {agg[key]['std']:.3f}" if key in agg else "–"


def system_table(systems: dict) -> list[str]:
    lines = [
        "| system | MAP@25 (mix) | MAP@25 | seen | unseen | recall@1 | recall@5 | recall@25 | recall@100 "
        "| CPU s / fold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, system in systems.items():
        agg = system["mean"]
        cpu = agg.get("cpu_seconds", {}).get("mean")
        if cpu is None and "wall_seconds" in agg:
            cost = f"{agg['wall_seconds']['mean']:.0f} wall"
        else:
            cost = f"{cpu:.0f}" if cpu is not None else "–"
        lines.append(f"| {name} | " + " | ".join(_cell(agg, k) for k in HEADLINE) + f" | {cost} |")
    return lines


def lever_lines(record: dict) -> list[str]:
    """Every lever's mix on both kinds of fold side by side; the best on one kind checked on the other."""
    kinds = [k for k in FOLD_KINDS if k in record["kinds"] and record["kinds"][k].get("levers")]
    if not kinds:
        return []
    names = list(record["kinds"][kinds[0]]["levers"])
    lines = [
        "",
        "Retrieval-time levers over the same fold models (MAP@25 (mix) / seen / unseen, mean ± std over folds):",
        "",
        "| lever | " + " | ".join(f"{k} folds: mix | seen | unseen" for k in kinds) + " |",
        "|---|" + "---|---|---|" * len(kinds),
    ]
    for name in names:
        cells = []
        for kind in kinds:
            agg = record["kinds"][kind]["levers"][name]["mean"]
            cells += [_cell(agg, "map@25_mix"), _cell(agg, "map@25_seen"), _cell(agg, "map@25_unseen")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(kinds) == 2:
        lines.append("")
        for tuned, checked in (kinds, kinds[::-1]):
            levers = {n: v for n, v in record["kinds"][tuned]["levers"].items() if "map@25_mix" in v["mean"]}
            if not levers:
                continue
            best = max(levers, key=lambda n: levers[n]["mean"]["map@25_mix"]["mean"])
            other = record["kinds"][checked]["levers"][best]["mean"]
            lines.append(
                f"* tuned on {tuned} folds: best `{best}` (mix {levers[best]['mean']['map@25_mix']['mean']:.3f}); "
                f"checked on {checked} folds: mix {_cell(other, 'map@25_mix')}, unseen {_cell(other, 'map@25_unseen')}"
            )
    return lines


def calibration_lines(record: dict) -> list[str]:
    lines = []
    for kind in FOLD_KINDS:
        calibration = record["kinds"].get(kind, {}).get("calibration")
        if not calibration:
            continue
        subsets = list(next(iter(calibration.values())))
        lines += [
            "",
            f"Calibration on test-like subsets of the {kind} folds' validation pairs (plain MAP@25 on the subset, "
            "whose composition is the test's; boost found, mean over folds):",
            "",
            "| rule | " + " | ".join(subsets) + " |",
            "|---|" + "---|" * len(subsets),
        ]
        for rule, per_subset in calibration.items():
            cells = []
            for subset in subsets:
                agg = per_subset[subset]["mean"]
                cells.append(f"{_cell(agg, 'map@25')} (b {agg['boost']['mean']:.3f})")
            lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines


def markdown(record: dict) -> str:
    lines = [
        f"Real-data cross-validation: `{record['data']}`, folds {record['folds']} of the project's "
        f"{record['n_splits']}-fold split, config `{record['config']}` {' '.join(record['overrides'])}".rstrip(),
        f"({record['machine']}; CPU: {record['cpu']}). Mean ± sample std over the folds. "
        f"MAP@25 (mix) = {1 - record['unseen_share']:g} x seen + {record['unseen_share']:g} x unseen.",
    ]
    for kind, result in record["kinds"].items():
        report = result.get("fold_report", {})
        shares = ", ".join(f"{report[f]['unseen_share']:.2f}" for f in sorted(report) if f in report)
        lines += ["", f"### {kind} folds (unseen share of validation pairs per fold: {shares})", ""]
        lines += system_table(result["systems"])
        stage_rows = [(n, s) for n, s in result["systems"].items() if "stage_wall_seconds" in s]
        for name, system in stage_rows:
            parts = [f"{stage} {wall:.0f}" for stage, wall in system["stage_wall_seconds"].items()]
            lines.append(f"\n* {name}: wall seconds per stage, all folds: " + ", ".join(parts))
    lines += lever_lines(record)
    lines += calibration_lines(record)
    return "\n".join(lines)


def run_kind(args, kind: str, overrides: list[str], work: Path) -> dict:
    """Every system on one kind of fold: baselines, the pipeline's variants, the ablations and the levers."""
    from eedi.config import load_config
    from eedi.data.folds import fold_report
    from eedi.pipeline.runner import run_stage

    overrides = [*overrides, f"folds.mode={kind}"]
    base_dir = work / "baselines"
    cfg = load_config(
        REPO / args.config, [*overrides, f"run_dir={base_dir}", f"folds.use={args.folds}", "folds.full_fit=false"]
    )
    run_stage(cfg, "prepare", force=True)
    from eedi.data.artifacts import load_folds, load_pairs

    report = fold_report(load_pairs(base_dir), load_folds(base_dir))
    systems: dict[str, dict] = {}
    baselines, mnrl_models = run_baselines(cfg, base_dir, args.folds, args.systems, work)
    for name, per_fold in baselines.items():
        systems[name] = {"folds": per_fold}
    fused_overrides = [*overrides, f"run_dir={base_dir}"]
    if mnrl_models:
        # The same retrieval-time terms over the baseline's models: what the recipe adds beyond them.
        for name, per_fold in run_ablations(
            "mnrl", args.config, fused_overrides, base_dir, args.folds, mnrl_models
        ).items():
            systems[name] = {"folds": per_fold}
        del mnrl_models
    levers: dict[str, dict] = {}
    calibration: dict[str, dict] = {}
    for name in args.systems:
        if name in VARIANTS:
            systems[name] = run_variant(name, args.config, overrides, args.folds, work, reuse=args.reuse)
            if name == "ours":
                for ablation, per_fold in run_ablations(
                    "ours", args.config, fused_overrides, work / name, args.folds
                ).items():
                    systems[ablation] = {"folds": per_fold}
                if not args.no_levers:
                    lever_folds, calibration_folds = run_levers(args.config, overrides, work / name, args.folds)
                    levers = {n: {"folds": f} for n, f in lever_folds.items()}
                    calibration = {
                        rule: {subset: {"folds": f} for subset, f in per_subset.items()}
                        for rule, per_subset in calibration_folds.items()
                    }
    for system in [*systems.values(), *levers.values()]:
        system["mean"] = aggregate(system["folds"])
    for per_subset in calibration.values():
        for entry in per_subset.values():
            entry["mean"] = aggregate(entry["folds"])
    return {
        "fold_report": {f"fold_{k}": report[f"fold_{k}"] for k in args.folds},
        "systems": systems,
        "levers": levers,
        "calibration": calibration,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eedi-dev"))
    parser.add_argument("--config", default="configs/cpu-kaggle.yaml")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fold-kinds", nargs="+", default=list(FOLD_KINDS), choices=FOLD_KINDS)
    parser.add_argument("--systems", nargs="+", default=[*BASELINES, "ours"], help=f"any of {[*BASELINES, *VARIANTS]}")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-real"), help="run directories (git-ignored)")
    parser.add_argument("--out", default=str(RESULTS / "real_data.json"))
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a variant's fold models already in --work (no retraining)"
    )
    parser.add_argument("--no-levers", action="store_true", help="skip the retrieval-time levers and calibration")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    unknown = [s for s in args.systems if s not in BASELINES and s not in VARIANTS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {[*BASELINES, *VARIANTS]}")

    from eedi.config import load_config

    cfg = load_config(REPO / args.config, [f"data.dir={Path(args.data).resolve()}", *args.overrides])
    if cfg.runtime.num_threads:
        import torch

        torch.set_num_threads(cfg.runtime.num_threads)
    started = time.time()
    record = {
        "data": str(args.data),
        "config": args.config,
        "overrides": args.overrides,
        "folds": args.folds,
        "n_splits": cfg.folds.n_splits,
        "epochs": cfg.retriever.epochs,
        "backbone": cfg.retriever.backbone,
        "unseen_share": cfg.evaluation.unseen_share,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "kinds": {},
    }
    for kind in args.fold_kinds:
        work = Path(args.work) / kind
        work.mkdir(parents=True, exist_ok=True)
        overrides = [f"data.dir={Path(args.data).resolve()}", *args.overrides]
        record["kinds"][kind] = run_kind(args, kind, overrides, work)
        record.update(machine_fields(started))
        write_results(args.out, record, markdown(record))  # after each kind: a partial run keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
