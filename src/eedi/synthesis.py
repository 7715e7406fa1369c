"""Stage 2 (synthesize): new training questions for misconceptions that training data lacks, by vLLM.

The competition's test set is rich in misconceptions that never occur in train.csv. This stage picks
those with the fewest labelled training pairs (:mod:`eedi.synthesis_prompts`), asks an instruction model
for a question per target with few-shot examples from the nearest misconceptions, and keeps what passes:

1. generation - vLLM offline batched inference (``LLM.generate``) with structured output: every
   completion is decoded under the JSON schema of one question, so it parses unless cut off;
2. validation - the Kaggle-schema checks of :func:`eedi.data.question_problem` plus distinct answers,
   a distractor that differs from the correct answer and length bounds; rejects counted by reason;
3. judge (optional) - the same engine scores 1-5 whether the distractor follows from the misconception;
4. de-duplication - exact and near-duplicate (embedding cosine) against the real training pairs,
   earlier synthetic rows and each other; the best-judged of near duplicates wins;
5. at most ``per_target`` questions per target.

Outputs under ``run_dir/synthetic/`` (schemas in README.md), each written atomically:

* ``train_synthetic.csv`` - Kaggle train.csv columns + provenance (:data:`PROVENANCE_COLUMNS`).
* ``rejected.csv`` - every rejected completion with its reason.
* ``state.json`` - targets done (the commit point of a batch: resuming skips them) and per-target counts.
* ``summary.json`` - targets covered, accept rate and rejects by reason, tokens/s.

Other stages read the rows through :func:`load_synthetic_pairs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from .config import Config, ConfigError
from .data import (LETTERS, MISCONCEPTION_COLUMNS, PAIR_COLUMNS, TRAIN_COLUMNS, DataError, load_misconceptions,
                   load_pairs, load_questions, pivot_pairs, question_problem)
from .io import read_json, write_csv, write_json
from .synthesis_prompts import (JUDGE_CHOICES, OUTPUT_FIELDS, TargetPrompt, few_shot_examples,
                                generation_messages, judge_messages, output_schema, render_chat, select_targets)

log = logging.getLogger(__name__)

SYNTHETIC_DIR = "synthetic"
CSV_NAME = "train_synthetic.csv"
PROVENANCE_COLUMNS = ["Source", "TargetMisconceptionId", "GeneratorModel", "PromptHash", "Seed", "JudgeScore",
                      "FewShotQuestionIds"]
SYNTHETIC_COLUMNS = TRAIN_COLUMNS + PROVENANCE_COLUMNS
REJECTED_COLUMNS = ["TargetMisconceptionId", "Reason", "Completion"]
# Far above Kaggle's QuestionIds (< 2,000), so synthetic and real ids never collide.
QUESTION_ID_START = 1_000_000
SOURCE = "synthetic"

# Why a completion was not kept, in the order the checks run.
REASONS = (
    "unparsable",             # not one JSON object (cut off by sampling.max_tokens)
    "missing_field",          # a required field absent or not a string
    "bad_correct_letter",     # CorrectAnswer not one of A-D
    "empty_question",
    "empty_answer",
    "empty_construct_or_subject",
    "bad_target_letter",      # MisconceptionAnswer not one of A-D
    "target_is_correct",      # the misconception's answer is the correct answer
    "duplicate_answers",      # two answers equal (ignoring case and spacing)
    "question_length",        # QuestionText outside synthetic.question_chars
    "answer_length",          # an answer outside synthetic.answer_chars
    "judge_invalid",          # the judge's reply is not a digit 1-5
    "judge_below_threshold",
    "exact_duplicate",        # same question and distractor as a real pair or a kept synthetic row
    "near_duplicate",         # cosine >= dedup.near_duplicate_threshold
    "over_per_target",        # valid, but the target already has per_target better questions
)
_PROBLEM_REASON = {"CorrectAnswer": "bad_correct_letter", "QuestionText": "empty_question"}


# --------------------------------------------------------------------------- validation


def parse_completion(text: str) -> tuple[dict[str, str] | None, str | None]:
    """(fields, None) for a completion holding every output field as a string, else (None, reason)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None, "unparsable"
    if not isinstance(obj, dict):
        return None, "unparsable"
    if any(not isinstance(obj.get(name), str) for name in OUTPUT_FIELDS):
        return None, "missing_field"
    return {name: obj[name].strip() for name in OUTPUT_FIELDS}, None


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def validate_question(fields: dict[str, str], question_chars: tuple[int, int],
                      answer_chars: tuple[int, int]) -> str | None:
    """The first reason (see REASONS) the parsed question can't be used, None if it is valid."""
    problem = question_problem(fields)
    if problem is not None:
        return _PROBLEM_REASON.get(problem[0], "empty_answer")
    if not fields["ConstructName"] or not fields["SubjectName"]:
        return "empty_construct_or_subject"
    correct, target = fields["CorrectAnswer"], fields["MisconceptionAnswer"]
    if target not in LETTERS:
        return "bad_target_letter"
    if target == correct:
        return "target_is_correct"
    answers = [fields[f"Answer{x}Text"] for x in LETTERS]
    if len({_norm(a) for a in answers}) < len(LETTERS):
        return "duplicate_answers"
    if not question_chars[0] <= len(fields["QuestionText"]) <= question_chars[1]:
        return "question_length"
    if any(not answer_chars[0] <= len(a) <= answer_chars[1] for a in answers):
        return "answer_length"
    return None


# --------------------------------------------------------------------------- de-duplication


def dedup_text(question: str, wrong_answer: str) -> str:
    """What makes a training pair: the question and the distractor the misconception explains."""
    return f"{question}\n{wrong_answer}"


class Embedder(Protocol):
    def encode(self, texts: list[str]):
        """L2-normalised rows (numpy or scipy sparse), one per text."""


class SentenceEmbedder:
    def __init__(self, path: str, device: str, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=len(texts) >= 512)


class TfidfEmbedder:
    """Character n-gram TF-IDF: no model needed; catches copies with small edits (numbers, wording)."""

    def __init__(self, corpus: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        # char_wb n-grams keep short maths tokens ("4n", "\frac") that a word tokenizer drops.
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self.vectorizer.fit(corpus)

    def encode(self, texts: list[str]):
        return self.vectorizer.transform(list(texts))


def cosine(a, b) -> np.ndarray:
    sims = a @ b.T
    return sims.toarray() if hasattr(sims, "toarray") else np.asarray(sims)


class Deduplicator:
    """Exact (normalised text) and near (cosine) duplicate filter over a growing reference set."""

    def __init__(self, embedder: Embedder, threshold: float):
        self.embedder = embedder
        self.threshold = threshold
        self.keys: set[str] = set()
        self.blocks: list = []

    def add(self, texts: list[str]) -> None:
        if not texts:
            return
        self.keys.update(_norm(t) for t in texts)
        self.blocks.append(self.embedder.encode(texts))

    def select(self, texts: list[str], groups: list[int] | None = None, cap: int | None = None) -> list[str | None]:
        """Greedy in the given order: a reason per text, None for those selected (added to the reference).

        With ``groups`` and ``cap``, at most ``cap`` texts per group are selected; the rest are
        "over_per_target" and, not being selected, don't block later near duplicates.
        """
        if not texts:
            return []
        vectors = self.embedder.encode(texts)
        best = np.full(len(texts), -np.inf)
        for block in self.blocks:
            best = np.maximum(best, cosine(vectors, block).max(axis=1))
        within = cosine(vectors, vectors)
        reasons: list[str | None] = []
        kept: list[int] = []
        kept_keys: set[str] = set()
        taken: Counter = Counter()
        for i, text in enumerate(texts):
            key = _norm(text)
            score = max(best[i], within[i, kept].max() if kept else -np.inf)
            if key in self.keys or key in kept_keys:
                reasons.append("exact_duplicate")
            elif score >= self.threshold:
                reasons.append("near_duplicate")
            elif groups is not None and cap is not None and taken[groups[i]] >= cap:
                reasons.append("over_per_target")
            else:
                reasons.append(None)
                kept.append(i)
                kept_keys.add(key)
                if groups is not None:
                    taken[groups[i]] += 1
        self.keys.update(kept_keys)
        if kept:
            self.blocks.append(vectors[np.asarray(kept)])  # numpy or sparse rows
        return reasons


def load_embedder(config: Config, corpus: list[str]) -> Embedder:
    name = config.synthetic.embedder
    if name == "tfidf":
        return TfidfEmbedder(corpus)
    from .runtime import resolve

    return SentenceEmbedder(check_model_source(name, "synthetic.embedder"), resolve(config.runtime).device)


# --------------------------------------------------------------------------- engine


def check_model_source(value: str, key: str) -> str:
    """A local model folder (returned absolute) or a hub id that can be loaded; else ConfigError naming ``key``."""
    path = Path(value).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}={value!r}: {path} has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    parts = value.split("/")
    if len(parts) == 2 and all(parts) and not value.startswith((".", "~")):
        from huggingface_hub import constants, try_to_load_from_cache

        if not constants.HF_HUB_OFFLINE:
            return value
        if isinstance(try_to_load_from_cache(value, "config.json"), str):
            return value
        raise ConfigError(f"{key}={value!r}: no such folder, and not in the Hugging Face cache "
                          "(HF_HUB_OFFLINE is set, so nothing is downloaded)")
    raise ConfigError(f"{key}={value!r}: no such model folder")


@dataclass
class EngineSettings:
    """The resolved, checked ``vllm.LLM`` arguments."""

    kwargs: dict

    @property
    def model(self) -> str:
        return self.kwargs["model"]


def engine_settings(config: Config) -> EngineSettings:
    """Resolve synthetic.engine into LLM kwargs; the checks that need no vLLM import (model, dtype)."""
    engine = config.synthetic.engine
    model = check_model_source(engine.model, "synthetic.engine.model")
    dtype = engine.dtype
    if dtype == "auto":
        from .runtime import resolve

        dtype = str(resolve(config.runtime).dtype).removeprefix("torch.")
    local_config = Path(model) / "config.json"
    if local_config.is_file():
        hf_config = json.loads(local_config.read_text(encoding="utf-8"))
        limit = hf_config.get("max_position_embeddings")
        if limit and not hf_config.get("rope_scaling") and engine.max_model_len > limit:
            raise ConfigError(f"synthetic.engine.max_model_len={engine.max_model_len} exceeds the model's "
                              f"max_position_embeddings={limit}")
    kwargs = {
        "model": model, "dtype": dtype, "quantization": engine.quantization,
        "tensor_parallel_size": engine.tensor_parallel_size, "max_model_len": engine.max_model_len,
        "gpu_memory_utilization": engine.gpu_memory_utilization, "enforce_eager": engine.enforce_eager,
        "seed": config.synthetic.sampling.seed,
        # Compact JSON (no free whitespace between tokens): fewer tokens, and no runs of blank lines that
        # small models fall into; the few-shot answers are written the same way. xgrammar: the backend
        # that supports this and the schema's string-length bounds.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if engine.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(engine.kv_cache_gb * 2**30)
    return EngineSettings(kwargs)


def available_devices() -> tuple[int, str]:
    """How many devices vLLM can shard over here, and what they are."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # The CPU backend binds one tensor-parallel rank per NUMA node.
        nodes = [p for p in Path("/sys/devices/system/node").glob("node*") if p.name[4:].isdigit()]
        return max(len(nodes), 1), "NUMA node(s) (vLLM CPU backend)"
    return int(current_platform.device_count()), f"{current_platform.device_type} device(s)"


def check_engine_devices(settings: EngineSettings) -> None:
    """The checks that need vLLM itself: quantization method and tensor parallelism vs devices."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    quantization = settings.kwargs["quantization"]
    if quantization is not None and quantization not in QUANTIZATION_METHODS:
        raise ConfigError(f"synthetic.engine.quantization={quantization!r} is not a vLLM quantization method; "
                          f"known: {sorted(QUANTIZATION_METHODS)}")
    tp = settings.kwargs["tensor_parallel_size"]
    count, what = available_devices()
    if tp > count:
        raise ConfigError(f"synthetic.engine.tensor_parallel_size={tp} but only {count} {what} available")


def start_engine(settings: EngineSettings):
    """``vllm.LLM`` with the checked settings; a failing start becomes one ConfigError naming the section."""
    check_engine_devices(settings)
    from vllm import LLM

    log.info("starting vLLM: %s", settings.kwargs)
    try:
        return LLM(**settings.kwargs)
    except Exception as err:  # vLLM raises many types (ValueError, RuntimeError from the engine process)
        raise ConfigError(f"synthetic.engine: vLLM could not start {settings.model!r} with {settings.kwargs}: "
                          f"{type(err).__name__}: {err}") from err


def shutdown_engine(llm) -> None:
    """Stop the engine's worker processes now rather than at interpreter exit (frees the KV cache)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


# --------------------------------------------------------------------------- one batch of targets


@dataclass
class Candidate:
    target: TargetPrompt
    seed: int
    text: str
    fields: dict[str, str] | None = None
    reason: str | None = None
    judge_score: int | None = None

    @property
    def wrong_answer(self) -> str:
        return self.fields[f"Answer{self.fields['MisconceptionAnswer']}Text"]


@dataclass
class RunStats:
    generate_calls: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    judge_prompts: int = 0
    judge_s: float = 0.0
    engine_start_s: float = 0.0
    targets_generated: int = 0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["tokens_per_s"] = round(self.completion_tokens / self.generation_s, 2) if self.generation_s else None
        for key in ("generation_s", "judge_s", "engine_start_s"):
            out[key] = round(out[key], 2)
        return out


@dataclass
class Batch:
    """Everything one batch of targets produced."""

    rows: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)


def tokenize(tokenizer, text: str) -> list[int]:
    # The chat template already holds the special tokens the model expects.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_candidates(llm, tokenizer, targets: list[TargetPrompt], config: Config,
                        stats: RunStats) -> list[Candidate]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    syn = config.synthetic
    schema = output_schema(syn.question_chars, syn.answer_chars)
    # The seed goes to the engine (LLM(seed=...)), not to each request: vLLM 0.32's CPU worker crashes on
    # per-request generators when a long prompt's prefill is chunked ("CPU Generator does not use offset").
    params = SamplingParams(
        n=syn.sampling.n, temperature=syn.sampling.temperature, top_p=syn.sampling.top_p,
        max_tokens=syn.sampling.max_tokens,
        structured_outputs=StructuredOutputsParams(json=schema),
    )
    prompts = [TokensPrompt(prompt_token_ids=tokenize(tokenizer, t.prompt)) for t in targets]
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params)
    stats.generation_s += time.perf_counter() - t0
    stats.generate_calls += 1
    stats.prompts += len(prompts)
    candidates = []
    for target, output in zip(targets, outputs):
        stats.prompt_tokens += len(output.prompt_token_ids)
        for completion in output.outputs:
            stats.completion_tokens += len(completion.token_ids)
            candidates.append(Candidate(target, syn.sampling.seed, completion.text))
    return candidates


def judge(llm, tokenizer, candidates: list[Candidate], threshold: int, stats: RunStats) -> None:
    """Score valid candidates 1-5 with the same engine (greedy, one digit); reject those below threshold."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    todo = [c for c in candidates if c.reason is None]
    if not todo:
        return
    prompts = [TokensPrompt(prompt_token_ids=tokenize(
        tokenizer, render_chat(tokenizer, judge_messages(c.target.misconception_name, c.fields)))) for c in todo]
    params = SamplingParams(temperature=0.0, max_tokens=4,
                            structured_outputs=StructuredOutputsParams(choice=JUDGE_CHOICES))
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params)
    stats.judge_s += time.perf_counter() - t0
    stats.generate_calls += 1
    stats.judge_prompts += len(prompts)
    for candidate, output in zip(todo, outputs):
        reply = output.outputs[0].text.strip()
        if reply not in JUDGE_CHOICES:
            candidate.reason = "judge_invalid"
            continue
        candidate.judge_score = int(reply)
        if candidate.judge_score < threshold:
            candidate.reason = "judge_below_threshold"


def filter_candidates(candidates: list[Candidate], config: Config, dedup: Deduplicator,
                      llm=None, tokenizer=None, stats: RunStats | None = None) -> list[Candidate]:
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
    reasons = dedup.select([dedup_text(c.fields["QuestionText"], c.wrong_answer) for c in valid],
                           groups=[c.target.misconception_id for c in valid], cap=syn.per_target)
    for c, reason in zip(valid, reasons):
        c.reason = reason
    return [c for c in valid if c.reason is None]


def _ids(names: pd.Series, ids: pd.Series) -> dict[str, int]:
    known = pd.DataFrame({"name": names, "id": ids}).dropna().drop_duplicates("name")
    return {str(n): int(i) for n, i in zip(known["name"], known["id"])}


def candidate_row(c: Candidate, question_id: int, model: str, construct_ids: dict[str, int],
                  subject_ids: dict[str, int]) -> dict[str, str]:
    """A train.csv row (all values as CSV strings; empty = unknown) plus provenance."""
    f = c.fields
    row = {"QuestionId": str(question_id),
           "ConstructId": str(construct_ids.get(f["ConstructName"], "")),
           "ConstructName": f["ConstructName"],
           "SubjectId": str(subject_ids.get(f["SubjectName"], "")),
           "SubjectName": f["SubjectName"],
           "CorrectAnswer": f["CorrectAnswer"],
           "QuestionText": f["QuestionText"]}
    for x in LETTERS:
        row[f"Answer{x}Text"] = f[f"Answer{x}Text"]
        row[f"Misconception{x}Id"] = str(c.target.misconception_id) if x == f["MisconceptionAnswer"] else ""
    row.update({"Source": SOURCE, "TargetMisconceptionId": str(c.target.misconception_id), "GeneratorModel": model,
                "PromptHash": c.target.prompt_hash, "Seed": str(c.seed),
                "JudgeScore": "" if c.judge_score is None else str(c.judge_score),
                "FewShotQuestionIds": " ".join(str(e.question_id) for e in c.target.examples)})
    return row


# --------------------------------------------------------------------------- state


def synthetic_dir(config: Config) -> Path:
    return Path(config.run_dir) / SYNTHETIC_DIR


def _frame_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()


def settings_hash(config: Config, pairs: pd.DataFrame, misconceptions: pd.DataFrame) -> str:
    """What a target's result depends on. Budget and target selection are left out: raising the budget
    resumes, it doesn't restart."""
    syn = config.synthetic.model_dump(mode="json",
                                      exclude={"enabled", "use", "budget", "max_train_examples", "checkpoint_every"})
    blob = json.dumps({"synthetic": syn, "dtype": config.runtime.dtype, "pairs": _frame_hash(pairs),
                       "misconceptions": _frame_hash(misconceptions)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_strings(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=columns, dtype=str)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; delete {path.parent} to start over")
    return df[columns]


@dataclass
class State:
    settings_hash: str
    targets: dict[str, dict]
    rows: pd.DataFrame
    rejected: pd.DataFrame


def load_state(out_dir: Path, current_hash: str) -> State:
    """What earlier runs finished. Rows of targets missing from state.json (a run stopped between writing
    the CSV and the state) are dropped, so those targets are generated again."""
    state = read_json(out_dir / "state.json", default=None)
    empty = State(current_hash, {}, pd.DataFrame(columns=SYNTHETIC_COLUMNS, dtype=str),
                  pd.DataFrame(columns=REJECTED_COLUMNS, dtype=str))
    if state is None:
        return empty
    if state.get("settings_hash") != current_hash:
        log.warning("synthetic settings or data changed since the last run (%s -> %s): generating from scratch",
                    state.get("settings_hash"), current_hash)
        return empty
    done = set(state["targets"])
    rows = _read_strings(out_dir / CSV_NAME, SYNTHETIC_COLUMNS)
    rejected = _read_strings(out_dir / "rejected.csv", REJECTED_COLUMNS)
    return State(current_hash, state["targets"], rows[rows["TargetMisconceptionId"].isin(done)],
                 rejected[rejected["TargetMisconceptionId"].isin(done)])


def save_state(out_dir: Path, state: State) -> None:
    # The CSVs first, state.json last: state.json is the commit point (see load_state).
    write_csv(out_dir / CSV_NAME, state.rows[SYNTHETIC_COLUMNS])
    write_csv(out_dir / "rejected.csv", state.rejected[REJECTED_COLUMNS])
    write_json(out_dir / "state.json", {"settings_hash": state.settings_hash, "targets": state.targets})


# --------------------------------------------------------------------------- stage


def _empty_output(config: Config, status: str) -> dict:
    out_dir = synthetic_dir(config)
    write_csv(out_dir / CSV_NAME, pd.DataFrame(columns=SYNTHETIC_COLUMNS))
    write_csv(out_dir / "rejected.csv", pd.DataFrame(columns=REJECTED_COLUMNS))
    (out_dir / "state.json").unlink(missing_ok=True)
    summary = {"status": status, "rows": 0}
    write_json(out_dir / "summary.json", summary)
    return summary


def build_prompts(targets: pd.DataFrame, pairs: pd.DataFrame, misconceptions: pd.DataFrame, embedder: Embedder,
                  tokenizer, config: Config) -> list[TargetPrompt]:
    """Few-shot prompts for the targets, rendered and measured; ConfigError if one can't fit the context."""
    syn = config.synthetic
    name_vectors = embedder.encode(misconceptions["MisconceptionName"].tolist())
    prompts = few_shot_examples(targets, pairs, misconceptions, name_vectors, syn.few_shot)
    for p in prompts:
        p.prompt = render_chat(tokenizer, generation_messages(p))
        p.prompt_tokens = len(tokenize(tokenizer, p.prompt))
    longest = max(prompts, key=lambda p: p.prompt_tokens)
    if longest.prompt_tokens + syn.sampling.max_tokens > syn.engine.max_model_len:
        raise ConfigError(f"synthetic.engine.max_model_len={syn.engine.max_model_len} is too small: the prompt for "
                          f"misconception {longest.misconception_id} has {longest.prompt_tokens} tokens and "
                          f"synthetic.sampling.max_tokens={syn.sampling.max_tokens}; raise it or lower "
                          "synthetic.few_shot")
    return prompts


def summarize(config: Config, targets: pd.DataFrame, state: State, done_before: int, stats: RunStats,
              model: str) -> dict:
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
            "selected_by_train_count": {str(k): int(v) for k, v in
                                        targets["TrainCount"].value_counts().sort_index().items()},
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
    out_dir = synthetic_dir(config)
    if not syn.enabled:
        log.info("synthetic.enabled=false: writing an empty %s", CSV_NAME)
        return _empty_output(config, "disabled")
    run_dir = Path(config.run_dir)
    pairs, misconceptions = load_pairs(run_dir), load_misconceptions(run_dir)
    settings = engine_settings(config)
    targets = select_targets(pairs, misconceptions, syn.budget, syn.max_train_examples)
    state = load_state(out_dir, settings_hash(config, pairs, misconceptions))
    pending = targets[~targets["MisconceptionId"].astype(str).isin(list(state.targets))]
    done_before = len(targets) - len(pending)
    stats = RunStats()
    log.info("%d target misconceptions (train counts %s); %d done earlier, %d to generate", len(targets),
             targets["TrainCount"].value_counts().sort_index().to_dict(), done_before, len(pending))
    if len(pending):
        tokenizer, prompts, dedup = _prepare(config, pairs, misconceptions, pending, state, settings)
        owned = llm is None
        if owned:
            from .runtime import configure_vllm_cpu_threads, resolve

            configure_vllm_cpu_threads(config.runtime.vllm_cpu_threads, resolve(config.runtime).device,
                                       settings.kwargs["tensor_parallel_size"])
            t0 = time.perf_counter()
            llm = start_engine(settings)
            stats.engine_start_s = time.perf_counter() - t0
        try:
            _generate(config, llm, tokenizer, prompts, dedup, pairs, state, stats, out_dir)
        finally:
            if owned:
                shutdown_engine(llm)
    save_state(out_dir, state)
    summary = summarize(config, targets, state, done_before, stats, syn.engine.model)
    write_json(out_dir / "summary.json", summary)
    log.info("synthetic: %d rows for %d/%d targets; accept rate %s; rejected %s; %s tokens/s", summary["rows"],
             summary["targets"]["covered"], summary["targets"]["selected"], summary["accept_rate"],
             summary["rejected"], summary["this_run"]["tokens_per_s"])
    return summary


def _prepare(config: Config, pairs: pd.DataFrame, misconceptions: pd.DataFrame, pending: pd.DataFrame,
             state: State, settings: EngineSettings) -> tuple[object, list[TargetPrompt], Deduplicator]:
    """Everything before the engine: prompts (length-checked) and the de-duplication reference."""
    from transformers import AutoTokenizer

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
    dedup.add([dedup_text(q, earlier.loc[i, f"Answer{x}Text"]) for i, q, x in zip(
        earlier.index, earlier["QuestionText"], _target_letters(earlier))])
    log.info("%d prompts (%d-%d tokens) and %d reference texts embedded in %.1fs", len(prompts),
             min(p.prompt_tokens for p in prompts), max(p.prompt_tokens for p in prompts),
             len(real_texts) + len(earlier), time.perf_counter() - t0)
    return tokenizer, prompts, dedup


def _generate(config: Config, llm, tokenizer, prompts: list[TargetPrompt], dedup: Deduplicator,
              pairs: pd.DataFrame, state: State, stats: RunStats, out_dir: Path) -> None:
    """Generate, filter and save batch after batch (each batch is committed to state.json)."""
    syn = config.synthetic
    train = pairs[pairs["split"] == "train"]
    construct_ids = _ids(train["ConstructName"], train["ConstructId"])
    subject_ids = _ids(train["SubjectName"], train["SubjectId"])
    next_id = max([QUESTION_ID_START - 1, *state.rows["QuestionId"].astype(int)]) + 1
    for start in range(0, len(prompts), syn.checkpoint_every):
        chunk = prompts[start:start + syn.checkpoint_every]
        candidates = generate_candidates(llm, tokenizer, chunk, config, stats)
        kept = filter_candidates(candidates, config, dedup, llm, tokenizer, stats)
        new_rows = []
        for c in sorted(kept, key=lambda c: c.target.misconception_id):
            new_rows.append(candidate_row(c, next_id, syn.engine.model, construct_ids, subject_ids))
            next_id += 1
        rejected = [{"TargetMisconceptionId": str(c.target.misconception_id), "Reason": c.reason, "Completion": c.text}
                    for c in candidates if c.reason is not None]
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
        state.rows = pd.concat([state.rows, pd.DataFrame(new_rows, columns=SYNTHETIC_COLUMNS, dtype=str)],
                               ignore_index=True)
        state.rejected = pd.concat([state.rejected, pd.DataFrame(rejected, columns=REJECTED_COLUMNS, dtype=str)],
                                   ignore_index=True)
        stats.targets_generated += len(chunk)
        save_state(out_dir, state)
        log.info("targets %d-%d of %d: %d/%d completions kept", start + 1, start + len(chunk), len(prompts),
                 len(kept), len(candidates))


def _target_letters(rows: pd.DataFrame) -> list[str]:
    """The answer letter whose Misconception{X}Id is filled in each synthetic row."""
    letters = []
    for row in rows[MISCONCEPTION_COLUMNS].itertuples(index=False):
        letters.append(next(x for x, value in zip(LETTERS, row) if value != ""))
    return letters


def run(config: Config) -> dict:
    return synthesize(config)


# --------------------------------------------------------------------------- for the training stages


def load_synthetic_pairs(config: Config) -> pd.DataFrame:
    """The synthetic rows as pairs.parquet rows (split="synthetic"), one per labelled synthetic distractor.

    Empty (with the pairs columns) when synthetic.use is false or nothing was generated: synthesize is an
    optional upstream of the training stages, so a run without it (``--stages``) trains on real rows only,
    with a warning. Rows whose MisconceptionId is not in misconceptions.parquet are dropped. The caller
    adds them to a fold's training part only: their QuestionIds are in no fold.
    """
    empty = pivot_pairs(pd.DataFrame(columns=TRAIN_COLUMNS), SOURCE, config.data.query_template)
    if not config.synthetic.use:
        return empty
    path = synthetic_dir(config) / CSV_NAME
    if not path.is_file():
        log.warning("synthetic.use=true but %s does not exist (stage synthesize has not run): no synthetic rows",
                    path)
        return empty
    if pd.read_csv(path, dtype=str, nrows=1).empty:
        return empty
    questions = load_questions(path, with_labels=True, known_ids=None)
    pairs = pivot_pairs(questions, SOURCE, config.data.query_template)
    pairs = pairs[pairs["MisconceptionId"].notna()]
    known = set(load_misconceptions(config.run_dir)["MisconceptionId"].astype(int))
    valid = pairs["MisconceptionId"].astype(int).isin(known)
    if not valid.all():
        log.warning("%s: %d rows with a MisconceptionId not in misconceptions.parquet dropped", path,
                    int((~valid).sum()))
    return pairs[valid][PAIR_COLUMNS].reset_index(drop=True)
