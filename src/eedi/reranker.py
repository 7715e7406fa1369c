"""Stage 5 (train-reranker): a listwise LoRA reranker, and the reranking used by evaluate/infer.

The reranker is a causal LM that reads the question context and a *window* of candidate
misconceptions labelled A, B, C, ... and answers with the label of the one behind the wrong
answer. Its score for each candidate is the probability of that candidate's label at the
answer position, restricted to the window's labels (:mod:`eedi.reranker_scoring`).

Training (per fold, on the fold's ``part="train"`` candidates; never on validation):

* windows of ``window_size`` candidates per labelled pair, in retriever order; the positive
  keeps its place when the retriever found it and is inserted at a random position when it
  did not; the target is the positive's label;
* *hard* windows take the negatives ranked right around the positive, *random* windows draw
  them from the retrieved top ``depth`` (``hard_ratio`` sets the mix);
* ``shuffle_windows`` then permutes each window: in retriever order the label's position
  carries the retriever's rank (the positive sits near the top), a shortcut a small model
  takes instead of reading the candidates;
* TRL's ``SFTTrainer`` with a peft LoRA adapter; the dataset is pre-tokenised with a
  completion mask covering only the label token, so the loss is on the answer token alone
  and the training input is token-for-token what scoring sees.

Reranking (:func:`rerank`) scores the retriever's top ``depth`` with sliding or tournament
windows, fuses reranker and retriever scores, and keeps candidates below ``depth`` in
retriever order after the reranked ones.

Public API (used by the quantize, evaluate and infer stages): :func:`label_token_ids`,
:func:`build_prompt`, :func:`calibration_prompts`, :func:`score_prompts`, :func:`rerank`,
:func:`merge_adapter`, :func:`run`.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .config import Config, RerankerConfig, config_to_dict
from .data import DataError, load_folds, load_misconceptions, load_pairs, train_val_split
from .io import atomic_dir, file_sha256, read_json, update_json, write_json, write_parquet, write_text
from .manifest import fingerprint
from .metrics import candidates_to_lists, ranking_metrics
from .reranker_scoring import LABELS, label_token_ids, make_scorer, score_prompts, score_with
from .runtime import model_kwargs, resolve

__all__ = [
    "CANDIDATE_COLUMNS", "LABELS", "SYSTEM_PROMPT", "build_prompt", "calibration_prompts", "fuse",
    "label_token_ids", "merge_adapter", "rerank", "run", "score_prompts", "sliding_windows", "training_windows",
]

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["QuestionId_Answer", "rank", "MisconceptionId", "score", "fold", "part"]
RERANKED_COLUMNS = CANDIDATE_COLUMNS + ["reranker_score", "final_score", "final_rank"]

SYSTEM_PROMPT = ("You are an experienced maths teacher. You know the misconceptions that lead pupils to "
                 "wrong answers.")

# Keys that change how a trained reranker is *used*, not what it learns: changing them
# re-scores the validation fold without retraining.
SCORING_KEYS = ("scheme", "stride", "advance", "fusion_weight", "tta_reverse", "backend",
                "score_batch_size", "tensor_parallel_size")


# --------------------------------------------------------------------------- prompts


def build_prompt(pair: Mapping, candidate_names: Sequence[str], tokenizer) -> str:
    """The chat-formatted prompt for one window, ending where the model writes the answer label.

    ``pair`` is a ``pairs.parquet`` row: its ``QueryText`` (construct, subject, question,
    correct and incorrect answer, rendered by ``data.query_template``) is the question context.
    """
    n = len(candidate_names)
    if not 1 <= n <= len(LABELS):
        raise ValueError(f"a window holds 1..{len(LABELS)} candidates, got {n}")
    lines = [str(pair["QueryText"]), "", "Which misconception leads to the incorrect answer?"]
    lines += [f"{LABELS[i]}. {name}" for i, name in enumerate(candidate_names)]
    lines.append(f"Answer with the letter ({LABELS[0]}-{LABELS[n - 1]}) only.")
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------- training windows


def training_windows(candidates: pd.DataFrame, positives: Mapping[str, int], window_size: int,
                     windows_per_pair: int, hard_ratio: float, depth: int, rng: np.random.Generator,
                     corpus_ids: Sequence[int] = (), max_windows: int | None = None,
                     shuffle: bool = False) -> pd.DataFrame:
    """Training windows for the labelled pairs in ``positives`` ({QuestionId_Answer: MisconceptionId}).

    Returns one row per window: ``QuestionId_Answer``, ``kind`` ("hard" | "random"),
    ``candidate_ids`` (MisconceptionIds in prompt order) and ``target`` (the positive's index).

    Exactly ``round(hard_ratio * total)`` windows are hard. A hard window is a block of the
    negatives ranked next to the positive, with the positive at its own place (a random offset
    decides where the block starts, so the positive's label varies); for a positive the
    retriever missed, the block is the bottom of the list, where it would rank. A random window
    samples negatives from the top ``depth``. Either way a missed positive goes to a random
    position. Pairs without retrieved candidates (e.g. synthetic rows the index did not cover)
    get random windows over ``corpus_ids``. ``shuffle`` then permutes every window, so the
    label position says nothing about the answer.
    """
    lists = candidates_to_lists(candidates) if len(candidates) else {}
    keys = sorted(positives)
    total = len(keys) * windows_per_pair
    n_hard = int(round(hard_ratio * total))
    kinds = np.array(["hard"] * n_hard + ["random"] * (total - n_hard))
    rng.shuffle(kinds)
    corpus = np.asarray(sorted(corpus_ids), dtype=np.int64)
    m_max = window_size - 1
    rows = []
    for i, key in enumerate(keys):
        positive = int(positives[key])
        top = lists.get(key)
        for j in range(windows_per_pair):
            kind = kinds[i * windows_per_pair + j]
            if top is None:
                pool = corpus[corpus != positive]
                negatives = rng.choice(pool, size=min(m_max, len(pool)), replace=False).tolist()
                slot = int(rng.integers(0, len(negatives) + 1))
                kind = "random"
            else:
                top = top[:depth]
                found = positive in top
                p = top.index(positive) if found else len(top)
                pool = [c for c in top if c != positive]
                m = min(m_max, len(pool))
                if kind == "hard":
                    # Start so that the block holds the negatives nearest the positive's rank p.
                    low, high = max(0, p - m), min(p, len(pool) - m)
                    start = int(rng.integers(low, high + 1))
                    negatives = pool[start:start + m]
                    slot = p - start if found else int(rng.integers(0, m + 1))
                else:
                    picked = np.sort(rng.choice(len(pool), size=m, replace=False))
                    negatives = [pool[x] for x in picked]
                    slot = int((picked < p).sum()) if found else int(rng.integers(0, m + 1))
            window = list(negatives)
            window.insert(slot, positive)
            if shuffle:
                window = [window[x] for x in rng.permutation(len(window))]
                slot = window.index(positive)
            rows.append({"QuestionId_Answer": key, "kind": str(kind), "candidate_ids": [int(c) for c in window],
                         "target": slot})
    windows = pd.DataFrame(rows, columns=["QuestionId_Answer", "kind", "candidate_ids", "target"])
    if max_windows is not None and len(windows) > max_windows:
        windows = windows.iloc[np.sort(rng.choice(len(windows), size=max_windows, replace=False))]
    return windows.reset_index(drop=True)


def _pair_lookup(pairs: pd.DataFrame) -> dict[str, dict]:
    return {row["QuestionId_Answer"]: row for row in pairs.to_dict("records")}


def _names(misconceptions: pd.DataFrame) -> dict[int, str]:
    return dict(zip(misconceptions["MisconceptionId"].astype(int), misconceptions["MisconceptionName"]))


def window_prompts(windows: pd.DataFrame, pairs: Mapping[str, Mapping], names: Mapping[int, str],
                   tokenizer) -> list[str]:
    missing = sorted(set(windows["QuestionId_Answer"]) - set(pairs))
    if missing:
        raise KeyError(f"{len(missing)} candidate pair(s) are not in pairs.parquet, e.g. {missing[:3]}")
    return [build_prompt(pairs[key], [names[c] for c in ids], tokenizer)
            for key, ids in zip(windows["QuestionId_Answer"], windows["candidate_ids"])]


def sft_dataset(windows: pd.DataFrame, pairs: Mapping[str, Mapping], names: Mapping[int, str], tokenizer,
                window_size: int, max_length: int):
    """Pre-tokenised TRL dataset: prompt ids + the target label token, completion mask on the label only."""
    from datasets import Dataset

    from .reranker_scoring import encode_prompts

    label_ids = label_token_ids(tokenizer, window_size)
    prompt_ids = encode_prompts(tokenizer, window_prompts(windows, pairs, names, tokenizer), max_length)
    input_ids, masks = [], []
    for ids, target in zip(prompt_ids, windows["target"]):
        input_ids.append(list(ids) + [label_ids[int(target)]])
        masks.append([0] * len(ids) + [1])
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": masks})


# --------------------------------------------------------------------------- training


def _lora_config(rc: RerankerConfig, num_layers: int):
    from peft import LoraConfig

    layers = None
    if rc.lora.layers is not None:
        layers = list(range(max(0, num_layers - rc.lora.layers), num_layers))
    return LoraConfig(r=rc.lora.r, lora_alpha=rc.lora.alpha, lora_dropout=rc.lora.dropout,
                      target_modules=list(rc.lora.target_modules), layers_to_transform=layers, task_type="CAUSAL_LM")


def train_reranker(config: Config, dataset, out_dir: Path) -> dict:
    """Fine-tune the backbone on ``dataset`` with TRL's SFTTrainer (+ LoRA); writes ``out_dir/adapter``
    (LoRA) or ``out_dir/merged`` (full fine-tuning) and ``out_dir/train_log.jsonl``.

    Resumes from the last checkpoint in ``out_dir/checkpoints`` when a run was interrupted.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    rc = config.reranker
    placement = resolve(config.runtime)
    tokenizer = AutoTokenizer.from_pretrained(rc.backbone)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(rc.backbone, **model_kwargs(placement, rc.load_in_4bit))
    if not rc.load_in_4bit:
        model.to(placement.device)
    peft_config = _lora_config(rc, model.config.get_text_config().num_hidden_layers) if rc.lora.enabled else None
    checkpoints = out_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=rc.epochs,
        per_device_train_batch_size=rc.batch_size,
        gradient_accumulation_steps=rc.grad_accum,
        learning_rate=rc.lr,
        lr_scheduler_type="cosine",
        warmup_steps=rc.warmup_ratio,  # a float < 1 is a ratio of the total steps
        gradient_checkpointing=rc.gradient_checkpointing,
        bf16=placement.dtype == torch.bfloat16,
        fp16=placement.dtype == torch.float16,
        use_cpu=not placement.is_cuda,
        completion_only_loss=True,
        max_length=None,  # prompts are already cut to reranker.max_length; the label is never cut
        train_sampling_strategy="group_by_length",  # similar lengths per batch: less padding
        save_strategy="steps",
        save_steps=rc.save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(10, rc.save_steps)),
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume:
        log.info("resuming reranker training from %s", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    target = out_dir / ("adapter" if rc.lora.enabled else "merged")
    with atomic_dir(target) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "train_loss" in entry]
    write_text(out_dir / "train_log.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))
    losses = [entry["loss"] for entry in history if "loss" in entry]
    summary = {"train_windows": len(dataset), "steps": int(trainer.state.global_step),
               "train_seconds": round(seconds, 1), "train_loss": round(float(result.training_loss), 4),
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    del trainer, model
    gc.collect()
    if placement.is_cuda:
        torch.cuda.empty_cache()
    return summary


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, config: Config) -> Path:
    """Fold a LoRA adapter into its base model (peft ``merge_and_unload``) and save an HF folder + tokenizer.

    The base is reloaded in ``runtime.dtype`` (never 4-bit), so a QLoRA adapter merges into
    full-precision weights that vLLM and the quantizer can read.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    placement = resolve(config.runtime)
    base_path = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    base = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(placement))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    del base, merged
    gc.collect()
    return out_dir


# --------------------------------------------------------------------------- reranking


def sliding_windows(n: int, size: int, stride: int) -> list[list[int]]:
    """Windows of ``size`` positions over ``range(n)`` every ``stride``; the last one ends at ``n``."""
    if n <= size:
        return [list(range(n))] if n else []
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return [list(range(s, s + size)) for s in starts]


def minmax(scores: np.ndarray) -> np.ndarray:
    """Retriever cosines scaled to [0, 1] within one pair's reranked candidates (all equal -> 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    span = scores.max() - scores.min() if len(scores) else 0.0
    return (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)


def fuse(reranker_scores: np.ndarray, retriever_scores: np.ndarray, weight: float) -> np.ndarray:
    """w * reranker probability + (1 - w) * min-max scaled retriever score."""
    return weight * np.asarray(reranker_scores, dtype=np.float64) + (1 - weight) * minmax(retriever_scores)


class _WindowScorer:
    """Scores windows of (pair, candidate ids) in one batch, with optional reversed-order TTA."""

    def __init__(self, scorer, pairs: Mapping[str, Mapping], names: Mapping[int, str], rc: RerankerConfig):
        self.scorer, self.pairs, self.names, self.rc = scorer, pairs, names, rc

    def __call__(self, windows: list[tuple[str, list[int]]]) -> list[np.ndarray]:
        orders = [(key, ids) for key, ids in windows]
        if self.rc.tta_reverse:
            orders += [(key, ids[::-1]) for key, ids in windows]
        prompts = [build_prompt(self.pairs[key], [self.names[c] for c in ids], self.scorer.tokenizer)
                   for key, ids in orders]
        probs = score_with(self.scorer, prompts, [len(ids) for _, ids in orders], self.rc.max_length)
        if not self.rc.tta_reverse:
            return probs
        n = len(windows)
        return [(probs[i] + probs[n + i][::-1]) / 2 for i in range(n)]


def _rerank_sliding(groups: dict[str, pd.DataFrame], score, rc: RerankerConfig) -> dict[str, tuple]:
    jobs, owners = [], []
    for key, top in groups.items():
        ids = top["MisconceptionId"].tolist()
        for positions in sliding_windows(len(ids), rc.window_size, rc.stride):
            jobs.append((key, [ids[p] for p in positions]))
            owners.append((key, positions))
    probs = score(jobs)
    sums = {key: np.zeros(len(top)) for key, top in groups.items()}
    counts = {key: np.zeros(len(top)) for key, top in groups.items()}
    for (key, positions), p in zip(owners, probs):
        sums[key][positions] += p
        counts[key][positions] += 1
    out = {}
    for key, top in groups.items():
        reranker = sums[key] / np.maximum(counts[key], 1)
        final = fuse(reranker, top["score"].to_numpy(), rc.fusion_weight)
        # Stable sort on the negated score: ties keep retriever order.
        order = np.argsort(-final, kind="stable")
        out[key] = (reranker, final, order)
    return out


def _rerank_tournament(groups: dict[str, pd.DataFrame], score, rc: RerankerConfig) -> dict[str, tuple]:
    retriever = {key: minmax(top["score"].to_numpy()) for key, top in groups.items()}
    ids = {key: top["MisconceptionId"].tolist() for key, top in groups.items()}
    reranker = {key: np.zeros(len(top)) for key, top in groups.items()}
    fused = {key: np.zeros(len(top)) for key, top in groups.items()}
    rounds = {key: np.zeros(len(top), dtype=np.int64) for key, top in groups.items()}
    pools = {key: list(range(len(top))) for key, top in groups.items() if len(top)}
    while pools:
        jobs, owners = [], []
        for key, pool in pools.items():
            # ceil(len / size) near-equal groups: none larger than a window, none of a single candidate
            for chunk in np.array_split(np.asarray(pool), -(-len(pool) // rc.window_size)):
                jobs.append((key, [ids[key][p] for p in chunk]))
                owners.append((key, chunk))
        probs = score(jobs)
        survivors: dict[str, list[int]] = {}
        for (key, chunk), p in zip(owners, probs):
            reranker[key][chunk] = p
            fused[key][chunk] = rc.fusion_weight * p + (1 - rc.fusion_weight) * retriever[key][chunk]
            winners = chunk[np.argsort(-fused[key][chunk], kind="stable")][:min(rc.advance, len(chunk) - 1)]
            rounds[key][winners] += 1
            survivors.setdefault(key, []).extend(int(w) for w in winners)
        # A pool that fitted in one window has had its final; the others play the next round in retriever order.
        pools = {key: sorted(survivors[key]) for key, pool in pools.items() if len(pool) > rc.window_size}
    out = {}
    for key in groups:
        order = np.lexsort((np.arange(len(fused[key])), -fused[key], -rounds[key]))
        out[key] = (reranker[key], rounds[key] + fused[key], order)
    return out


def rerank(config: Config, model_path: str | Path, candidates: pd.DataFrame, pairs: pd.DataFrame,
           misconceptions: pd.DataFrame, backend: str | None = None, scorer=None) -> pd.DataFrame:
    """Rerank each pair's top ``reranker.depth`` candidates with the reranker at ``model_path``.

    Returns the candidate rows (all of them) plus ``reranker_score`` (mean label probability
    over the candidate's sliding windows, or its probability in the last tournament window it
    played; NaN below ``depth``), ``final_score`` (sliding: fused score; tournament: rounds won
    + fused score; NaN below depth) and ``final_rank`` (0-based; candidates below ``depth``
    keep their retriever rank). ``scorer`` reuses an already built engine.
    """
    rc = config.reranker
    missing = [c for c in ("QuestionId_Answer", "rank", "MisconceptionId", "score") if c not in candidates.columns]
    if missing:
        raise KeyError(f"candidates table lacks column(s) {missing}")
    pair_rows = _pair_lookup(pairs)
    unknown = sorted(set(candidates["QuestionId_Answer"]) - set(pair_rows))
    if unknown:
        raise KeyError(f"{len(unknown)} candidate pair(s) are not in pairs.parquet, e.g. {unknown[:3]}")
    names = _names(misconceptions)
    unknown_ids = sorted(set(candidates["MisconceptionId"].astype(int)) - set(names))
    if unknown_ids:
        raise KeyError(f"candidate MisconceptionId(s) {unknown_ids[:5]} are not in misconceptions.parquet")
    ordered = candidates.sort_values(["QuestionId_Answer", "rank"], kind="stable").reset_index(drop=True)
    position = ordered.groupby("QuestionId_Answer", sort=False).cumcount().to_numpy()
    groups = {key: grp.head(rc.depth) for key, grp in ordered.groupby("QuestionId_Answer", sort=False)}
    own = scorer is None
    if own:
        scorer = make_scorer(model_path, backend or rc.backend, config)
    score = _WindowScorer(scorer, pair_rows, names, rc)
    t0 = time.time()
    try:
        results = (_rerank_sliding if rc.scheme == "sliding" else _rerank_tournament)(groups, score, rc)
    finally:
        if own:
            scorer.close()
    log.info("reranked %d pairs (depth %d, %s) in %.1fs", len(groups), rc.depth, rc.scheme, time.time() - t0)
    out = ordered.copy()
    out["reranker_score"] = np.nan
    out["final_score"] = np.nan
    # Below depth: the retriever's order, after the reranked block (which fills places 0..depth-1).
    out["final_rank"] = position
    for key, top in groups.items():
        reranker, final, order = results[key]
        index = top.index.to_numpy()
        out.loc[index, "reranker_score"] = reranker
        out.loc[index, "final_score"] = final
        new_rank = np.empty(len(order), dtype=np.int64)
        new_rank[order] = np.arange(len(order))
        out.loc[index, "final_rank"] = new_rank
    return out.sort_values(["QuestionId_Answer", "final_rank"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- stage


def read_candidates(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "not found: run the index stage first (`eedi index`)")
    candidates = pd.read_parquet(path)
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(candidates.columns)}", column=missing[0])
    return candidates


def fold_metrics(ranked: pd.DataFrame, pairs: pd.DataFrame, rank_column: str, seen_ids: set[int]) -> dict:
    """ranking_metrics of a (reranked) candidates table, split by whether the label was seen in training."""
    lists = candidates_to_lists(ranked.assign(rank=ranked[rank_column]))
    labels = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"]
    keys = sorted(k for k in lists if k in labels.index)
    actual = [int(labels[k]) for k in keys]
    return ranking_metrics(actual, [lists[k] for k in keys], seen=[a in seen_ids for a in actual])


def _train_fingerprint(config: Config, candidates_path: Path) -> str:
    rc = config_to_dict(config)["reranker"]
    trained = {k: v for k, v in rc.items() if k not in SCORING_KEYS}
    synthetic = config_to_dict(config).get("synthetic")
    return fingerprint(trained, synthetic, config.seed, file_sha256(candidates_path))


def _synthetic(config: Config) -> pd.DataFrame | None:
    synthetic = getattr(config, "synthetic", None)
    if not (synthetic and synthetic.use):
        return None
    from .synthesis import load_synthetic_pairs

    rows = load_synthetic_pairs(config)
    return rows.dropna(subset=["MisconceptionId"]) if len(rows) else None


def _fit(config: Config, out_dir: Path, train_candidates: pd.DataFrame, positives: dict[str, int],
         pairs: pd.DataFrame, misconceptions: pd.DataFrame, train_fp: str) -> dict:
    """Train (or reuse) one reranker: windows -> SFT -> adapter -> merged model."""
    from transformers import AutoTokenizer

    rc = config.reranker
    info_path = out_dir / "train_info.json"
    info = read_json(info_path, default={}) or {}
    if info.get("fingerprint") == train_fp and (out_dir / "merged" / "config.json").exists():
        log.info("%s is trained with this config: reused", out_dir)
        return info.get("summary", {})
    if info.get("fingerprint") not in (None, train_fp) and (out_dir / "checkpoints").exists():
        shutil.rmtree(out_dir / "checkpoints")  # checkpoints of another config must not be resumed
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(info_path, {"fingerprint": train_fp, "status": "training"})
    rng = np.random.default_rng(config.seed)
    names = _names(misconceptions)
    windows = training_windows(train_candidates, positives, rc.window_size, rc.windows_per_pair, rc.hard_ratio,
                               rc.depth, rng, corpus_ids=list(names), max_windows=rc.max_train_windows,
                               shuffle=rc.shuffle_windows)
    write_parquet(out_dir / "train_windows.parquet", windows)
    tokenizer = AutoTokenizer.from_pretrained(rc.backbone)
    dataset = sft_dataset(windows, _pair_lookup(pairs), names, tokenizer, rc.window_size, rc.max_length)
    log.info("%s: %d training windows (%d hard) from %d pairs", out_dir.name, len(windows),
             int((windows["kind"] == "hard").sum()), len(positives))
    summary = train_reranker(config, dataset, out_dir)
    summary["hard_windows"] = int((windows["kind"] == "hard").sum())
    if rc.lora.enabled:
        merge_adapter(out_dir / "adapter", out_dir / "merged", config)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    write_json(info_path, {"fingerprint": train_fp, "status": "done", "summary": summary})
    return summary


def one_list_per_pair(candidates: pd.DataFrame) -> pd.DataFrame:
    """Rows of several folds' candidate tables, keeping one list per pair: its out-of-fold list (part="val")
    where one exists, else the list of the lowest fold."""
    in_sample = candidates["part"] != "val"
    choice = (candidates.assign(_in_sample=in_sample).sort_values(["_in_sample", "fold"], kind="stable")
              .drop_duplicates("QuestionId_Answer")[["QuestionId_Answer", "fold"]])
    return candidates.merge(choice, on=["QuestionId_Answer", "fold"])


def _training_rows(config: Config, pairs: pd.DataFrame, keys: set[str]) -> tuple:
    """Positives for the training keys, plus the synthetic rows when configured (training only)."""
    labels = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"]
    positives = {k: int(labels[k]) for k in sorted(keys) if k in labels.index}
    synthetic = _synthetic(config)
    if synthetic is not None:
        clash = synthetic["QuestionId_Answer"].isin(pairs["QuestionId_Answer"])
        if clash.any():
            raise ValueError(f"{int(clash.sum())} synthetic row(s) reuse QuestionId_Answer keys of pairs.parquet, "
                             f"e.g. {synthetic.loc[clash, 'QuestionId_Answer'].iloc[0]!r}")
        positives.update(zip(synthetic["QuestionId_Answer"], synthetic["MisconceptionId"].astype(int)))
        pairs = pd.concat([pairs, synthetic[[c for c in pairs.columns if c in synthetic.columns]]],
                          ignore_index=True)
    return positives, pairs


def run(config: Config) -> dict:
    """Stage 5: per fold in folds.use, train the reranker on part="train", rerank part="val", record MAP."""
    if not config.reranker.enabled:
        log.info("reranker.enabled=false: no reranker is trained; infer submits the retriever's ranking")
        return {"skipped": "reranker.enabled=false"}
    run_dir = Path(config.run_dir)
    pairs, folds, misconceptions = load_pairs(run_dir), load_folds(run_dir), load_misconceptions(run_dir)
    summary: dict = {"folds": {}}
    tables = []
    for k in config.folds.use:
        path = run_dir / "candidates" / f"fold_{k}.parquet"
        candidates = read_candidates(path)
        train_part = candidates[candidates["part"] == "train"]
        val_part = candidates[candidates["part"] == "val"]
        if train_part.empty or val_part.empty:
            raise DataError(path, f"needs part='train' and part='val' rows (found "
                                  f"{sorted(candidates['part'].unique())})", column="part")
        tables.append(candidates)
        out_dir = run_dir / "reranker" / f"fold_{k}"
        positives, train_pairs = _training_rows(config, pairs, set(train_part["QuestionId_Answer"]))
        fit = _fit(config, out_dir, train_part, positives, train_pairs, misconceptions,
                   _train_fingerprint(config, path))
        reranked = rerank(config, out_dir / "merged", val_part, pairs, misconceptions, config.reranker.backend)
        write_parquet(run_dir / "reranked" / f"fold_{k}.parquet", reranked[RERANKED_COLUMNS])
        seen = set(train_val_split(pairs, folds, k)[0]["MisconceptionId"].astype(int))
        metrics = fold_metrics(reranked, pairs, "final_rank", seen)
        retriever = fold_metrics(val_part, pairs, "rank", seen)
        update_json(run_dir / "metrics.json", {f"fold_{k}": {"reranker": metrics}})
        log.info("fold %d: MAP@25 retriever %.4f -> reranker %.4f (%d val pairs)", k, retriever["map@25"],
                 metrics["map@25"], metrics["n"])
        summary["folds"][f"fold_{k}"] = {"retriever_map@25": retriever["map@25"], "reranker_map@25": metrics["map@25"],
                                         "reranker_map@25_unseen": metrics.get("map@25_unseen"), "train": fit}
    if config.folds.full_fit:
        # Every labelled pair once, with the most realistic candidate list the folds offer.
        combined = one_list_per_pair(pd.concat(tables, ignore_index=True))
        positives, train_pairs = _training_rows(config, pairs, set(combined["QuestionId_Answer"]))
        full_fp = fingerprint(*[_train_fingerprint(config, run_dir / "candidates" / f"fold_{k}.parquet")
                                for k in config.folds.use])
        summary["full"] = _fit(config, run_dir / "reranker" / "full", combined, positives, train_pairs,
                               misconceptions, full_fp)
    return summary


def calibration_prompts(config: Config, fold: int | None, n: int, max_length: int) -> list[str]:
    """``n`` reranker prompts of training windows (fold ``fold``'s part="train"; None: every fold in
    folds.use), for GPTQ/AWQ calibration. Prompts longer than ``max_length`` tokens keep their end."""
    from transformers import AutoTokenizer

    run_dir = Path(config.run_dir)
    folds = config.folds.use if fold is None else [fold]
    candidates = pd.concat([read_candidates(run_dir / "candidates" / f"fold_{k}.parquet") for k in folds])
    candidates = one_list_per_pair(candidates[candidates["part"] == "train"])
    pairs, misconceptions = load_pairs(run_dir), load_misconceptions(run_dir)
    labels = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"]
    positives = {k: int(labels[k]) for k in set(candidates["QuestionId_Answer"]) if k in labels.index}
    rc = config.reranker
    rng = np.random.default_rng(config.seed)
    windows = training_windows(candidates, positives, rc.window_size, 1, rc.hard_ratio, rc.depth, rng,
                               max_windows=n, shuffle=rc.shuffle_windows)
    tokenizer = AutoTokenizer.from_pretrained(rc.backbone)
    prompts = window_prompts(windows, _pair_lookup(pairs), _names(misconceptions), tokenizer)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [p if len(x) <= max_length else tokenizer.decode(x[-max_length:]) for p, x in zip(prompts, ids)]
