"""Stage ``synthesize``: new training questions for misconceptions that training data lacks, by vLLM.

The competition's test set is rich in misconceptions that never occur in train.csv. This stage picks
those with the fewest labelled training pairs (:mod:`eedi.synthesis.prompts`), asks an instruction model
for a question per target with few-shot examples from the nearest misconceptions, and keeps what passes:

1. generation - vLLM offline batched inference (``LLM.generate``) with structured output: every
   completion is decoded under the JSON schema of one question, so it parses unless cut off;
2. validation - the Kaggle-schema checks of :func:`eedi.data.kaggle.question_problem` plus distinct answers,
   a distractor that differs from the correct answer and length bounds; rejects counted by reason;
3. judge (optional) - the same engine scores 1-5 whether the distractor follows from the misconception;
4. de-duplication - exact and near-duplicate (embedding cosine) against the real training pairs,
   earlier synthetic rows and each other; the best-judged of near duplicates wins;
5. at most ``per_target`` questions per target.

Outputs under ``run_dir/synthetic/`` (schemas in docs/stages.md), each written atomically:

* ``train_synthetic.csv`` - Kaggle train.csv columns + provenance (:data:`eedi.synthesis.store.PROVENANCE_COLUMNS`).
* ``rejected.csv`` - every rejected completion with its reason.
* ``state.json`` - targets done (the commit point of a batch: resuming skips them) and per-target counts.
* ``summary.json`` - targets covered, accept rate and rejects by reason, tokens/s.

Other stages read the rows through :func:`eedi.synthesis.store.load_synthetic_pairs`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

from eedi.config import Config
from eedi.data.artifacts import load_misconceptions, load_pairs
from eedi.data.schema import LETTERS, MISCONCEPTION_COLUMNS
from eedi.errors import ConfigError
from eedi.fileio import write_csv, write_json
from eedi.layout import RunLayout
from eedi.runtime import configure_vllm_cpu_threads, resolve
from eedi.synthesis.dedup import Deduplicator, Embedder, dedup_text, load_embedder
from eedi.synthesis.engine import (
    Candidate,
    EngineSettings,
    RunStats,
    engine_settings,
    generate_candidates,
    judge,
    shutdown_engine,
    start_engine,
    tokenize,
)
from eedi.synthesis.parse import REASONS, parse_completion, validate_question
from eedi.synthesis.prompts import (
    TargetPrompt,
    few_shot_examples,
    generation_messages,
    render_chat,
    select_targets,
)
from eedi.synthesis.store import (
    QUESTION_ID_START,
    REJECTED_COLUMNS,
    SYNTHETIC_COLUMNS,
    State,
    _ids,
    candidate_row,
    load_state,
    save_state,
    settings_hash,
)

log = logging.getLogger(__name__)


def filter_candidates(
    candidates: list[Candidate],
    config: Config,
    dedup: Deduplicator,
    llm=None,
    tokenizer=None,
    stats: RunStats | None = None,
) -> list[Candidate]:
    """Validate, judge (if enabled), de-duplicate and cap per target. Returns the kept candidates in order."""
    syn = config.synthetic
    for c in candidates:
        c.fields, c.reason = parse_completion(c.text)
        if c.reason is None:
            c.reason = validate_question(c.fields, syn.question_chars, syn.answer_chars)
    if syn.judge.enabled:
        judge(llm, tokenizer, candidates, syn.judge.threshold, stats or RunStats())
    # Best-judged first, so of two near duplicates the better one survives (stable: generation order on ties).
    valid = sorted((c for c in candidates if c.reason is None), key=lambda c: -(c.judge_score or 0))
    reasons = dedup.select(
        [dedup_text(c.fields["QuestionText"], c.wrong_answer) for c in valid],
        groups=[c.target.misconception_id for c in valid],
        cap=syn.per_target,
    )
    for c, reason in zip(valid, reasons):
        c.reason = reason
    return [c for c in valid if c.reason is None]


# --------------------------------------------------------------------------- stage


def _empty_output(config: Config, status: str) -> dict:
    layout = RunLayout(config.run_dir)
    write_csv(layout.synthetic_rows, pd.DataFrame(columns=SYNTHETIC_COLUMNS))
    write_csv(layout.synthetic_rejected, pd.DataFrame(columns=REJECTED_COLUMNS))
    layout.synthetic_state.unlink(missing_ok=True)
    summary = {"status": status, "rows": 0}
    write_json(layout.synthetic_summary, summary)
    return summary


def build_prompts(
    targets: pd.DataFrame,
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    embedder: Embedder,
    tokenizer,
    config: Config,
) -> list[TargetPrompt]:
    """Few-shot prompts for the targets, rendered and measured; ConfigError if one can't fit the context."""
    syn = config.synthetic
    name_vectors = embedder.encode(misconceptions["MisconceptionName"].tolist())
    prompts = few_shot_examples(targets, pairs, misconceptions, name_vectors, syn.few_shot)
    for p in prompts:
        p.prompt = render_chat(tokenizer, generation_messages(p))
        p.prompt_tokens = len(tokenize(tokenizer, p.prompt))
    longest = max(prompts, key=lambda p: p.prompt_tokens)
    if longest.prompt_tokens + syn.sampling.max_tokens > syn.engine.max_model_len:
        raise ConfigError(
            f"synthetic.engine.max_model_len={syn.engine.max_model_len} is too small: the prompt for "
            f"misconception {longest.misconception_id} has {longest.prompt_tokens} tokens and "
            f"synthetic.sampling.max_tokens={syn.sampling.max_tokens}; raise it or lower "
            "synthetic.few_shot"
        )
    return prompts


def summarize(
    config: Config, targets: pd.DataFrame, state: State, done_before: int, stats: RunStats, model: str
) -> dict:
    selected = {str(m) for m in targets["MisconceptionId"]}
    records = state.targets.values()
    candidates = sum(r["candidates"] for r in records)
    accepted = sum(r["accepted"] for r in records)
    rejected: Counter = Counter()
    for r in records:
        rejected.update(r["rejected"])
    return {
        "status": "done",
        "generator_model": model,
        "settings_hash": state.settings_hash,
        "targets": {
            "selected": len(selected),
            "done": len(selected & set(state.targets)),
            "skipped_done": done_before,
            "generated_now": stats.targets_generated,
            "covered": sum(1 for m in selected if state.targets.get(m, {}).get("accepted", 0) > 0),
            "selected_by_train_count": {
                str(k): int(v) for k, v in targets["TrainCount"].value_counts().sort_index().items()
            },
        },
        "candidates": candidates,
        "accepted": accepted,
        "rows": int(len(state.rows)),
        "rejected": {r: rejected[r] for r in REASONS if rejected[r]},
        "accept_rate": round(accepted / candidates, 4) if candidates else None,
        "reject_rate": {r: round(rejected[r] / candidates, 4) for r in REASONS if rejected[r]},
        "this_run": stats.as_dict(),
    }


def synthesize(config: Config, llm=None) -> dict:
    """Run stage 2. ``llm``: an already started ``vllm.LLM`` to reuse (tests); else one is started if
    any target is left to generate, and shut down at the end."""
    syn = config.synthetic
    layout = RunLayout(config.run_dir)
    if not syn.enabled:
        log.info("synthetic.enabled=false: writing an empty %s", RunLayout(config.run_dir).synthetic_rows.name)
        return _empty_output(config, "disabled")
    # first: a setting the machine cannot meet (tensor parallelism over absent GPUs) fails before any work
    settings = engine_settings(config)
    run_dir = Path(config.run_dir)
    pairs, misconceptions = load_pairs(run_dir), load_misconceptions(run_dir)
    targets = select_targets(pairs, misconceptions, syn.budget, syn.max_train_examples)
    state = load_state(layout, settings_hash(config, pairs, misconceptions))
    pending = targets[~targets["MisconceptionId"].astype(str).isin(list(state.targets))]
    done_before = len(targets) - len(pending)
    stats = RunStats()
    log.info(
        "%d target misconceptions (train counts %s); %d done earlier, %d to generate",
        len(targets),
        targets["TrainCount"].value_counts().sort_index().to_dict(),
        done_before,
        len(pending),
    )
    if len(pending):
        tokenizer, prompts, dedup = _prepare(config, pairs, misconceptions, pending, state, settings)
        owned = llm is None
        if owned:
            configure_vllm_cpu_threads(
                config.runtime.vllm_cpu_threads, resolve(config.runtime).device, settings.kwargs["tensor_parallel_size"]
            )
            t0 = time.perf_counter()
            llm = start_engine(settings)
            stats.engine_start_s = time.perf_counter() - t0
        try:
            _generate(config, llm, tokenizer, prompts, dedup, pairs, state, stats, layout)
        finally:
            if owned:
                shutdown_engine(llm)
    save_state(layout, state)
    summary = summarize(config, targets, state, done_before, stats, syn.engine.model)
    write_json(layout.synthetic_summary, summary)
    log.info(
        "synthetic: %d rows for %d/%d targets; accept rate %s; rejected %s; %s tokens/s",
        summary["rows"],
        summary["targets"]["covered"],
        summary["targets"]["selected"],
        summary["accept_rate"],
        summary["rejected"],
        summary["this_run"]["tokens_per_s"],
    )
    return summary


def _prepare(
    config: Config,
    pairs: pd.DataFrame,
    misconceptions: pd.DataFrame,
    pending: pd.DataFrame,
    state: State,
    settings: EngineSettings,
) -> tuple[object, list[TargetPrompt], Deduplicator]:
    """Everything before the engine: prompts (length-checked) and the de-duplication reference."""

    syn = config.synthetic
    train = pairs[pairs["split"] == "train"]
    real_texts = [dedup_text(q, a) for q, a in zip(train["QuestionText"], train["WrongAnswerText"])]
    embedder = load_embedder(config, real_texts + misconceptions["MisconceptionName"].tolist())
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    t0 = time.perf_counter()
    prompts = build_prompts(pending, pairs, misconceptions, embedder, tokenizer, config)
    dedup = Deduplicator(embedder, syn.dedup.near_duplicate_threshold)
    dedup.add(real_texts)
    earlier = state.rows
    dedup.add(
        [
            dedup_text(q, earlier.loc[i, f"Answer{x}Text"])
            for i, q, x in zip(earlier.index, earlier["QuestionText"], _target_letters(earlier))
        ]
    )
    log.info(
        "%d prompts (%d-%d tokens) and %d reference texts embedded in %.1fs",
        len(prompts),
        min(p.prompt_tokens for p in prompts),
        max(p.prompt_tokens for p in prompts),
        len(real_texts) + len(earlier),
        time.perf_counter() - t0,
    )
    return tokenizer, prompts, dedup


def _generate(
    config: Config,
    llm,
    tokenizer,
    prompts: list[TargetPrompt],
    dedup: Deduplicator,
    pairs: pd.DataFrame,
    state: State,
    stats: RunStats,
    layout: RunLayout,
) -> None:
    """Generate, filter and save batch after batch (each batch is committed to state.json)."""
    syn = config.synthetic
    train = pairs[pairs["split"] == "train"]
    construct_ids = _ids(train["ConstructName"], train["ConstructId"])
    subject_ids = _ids(train["SubjectName"], train["SubjectId"])
    next_id = max([QUESTION_ID_START - 1, *state.rows["QuestionId"].astype(int)]) + 1
    for start in range(0, len(prompts), syn.checkpoint_every):
        chunk = prompts[start : start + syn.checkpoint_every]
        candidates = generate_candidates(llm, tokenizer, chunk, config, stats)
        kept = filter_candidates(candidates, config, dedup, llm, tokenizer, stats)
        new_rows = []
        for c in sorted(kept, key=lambda c: c.target.misconception_id):
            new_rows.append(candidate_row(c, next_id, syn.engine.model, construct_ids, subject_ids))
            next_id += 1
        rejected = [
            {"TargetMisconceptionId": str(c.target.misconception_id), "Reason": c.reason, "Completion": c.text}
            for c in candidates
            if c.reason is not None
        ]
        for target in chunk:
            mine = [c for c in candidates if c.target is target]
            state.targets[str(target.misconception_id)] = {
                "candidates": len(mine),
                "accepted": sum(c.reason is None for c in mine),
                "rejected": dict(Counter(c.reason for c in mine if c.reason is not None)),
                "train_count": target.train_count,
                "prompt_hash": target.prompt_hash,
                "prompt_tokens": target.prompt_tokens,
            }
        state.rows = pd.concat(
            [state.rows, pd.DataFrame(new_rows, columns=SYNTHETIC_COLUMNS, dtype=str)], ignore_index=True
        )
        state.rejected = pd.concat(
            [state.rejected, pd.DataFrame(rejected, columns=REJECTED_COLUMNS, dtype=str)], ignore_index=True
        )
        stats.targets_generated += len(chunk)
        save_state(layout, state)
        log.info(
            "targets %d-%d of %d: %d/%d completions kept",
            start + 1,
            start + len(chunk),
            len(prompts),
            len(kept),
            len(candidates),
        )


def _target_letters(rows: pd.DataFrame) -> list[str]:
    """The answer letter whose Misconception{X}Id is filled in each synthetic row."""
    letters = []
    for row in rows[MISCONCEPTION_COLUMNS].itertuples(index=False):
        letters.append(next(x for x, value in zip(LETTERS, row) if value != ""))
    return letters


def run(config: Config) -> dict:
    return synthesize(config)
