"""A trained run, loaded once, answering (question, wrong answer) -> ranked misconceptions.

It is the Kaggle path (:func:`eedi.inference.predict`) kept in memory: the run's resolved config (from its
``manifest.json``), its retriever (``retriever/full/model``, else the first fold's), the retrieval index
with the run's label memory and unseen prior (:class:`eedi.index.CandidateRetriever` over every labelled
training pair, as ``infer`` uses it), and optionally its reranker (chosen as ``infer`` chooses it, scored
by a backend built once). Queries are rendered with the run's ``data.query_template`` from the same fields
:func:`eedi.data.pivot_pairs` gives it (:func:`served_pairs`; uploads go through pivot_pairs itself), so a
served query is byte-for-byte what the model saw in training.

Model calls hold one lock: a 2-core CPU gains nothing from running two forward passes at once, and
SentenceTransformer/transformers models are not documented as thread-safe.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from eedi.config import Config, apply_overrides
from eedi.data.artifacts import load_misconceptions, load_pairs
from eedi.data.kaggle import load_questions
from eedi.data.pairs import pivot_pairs
from eedi.data.schema import PAIR_COLUMNS
from eedi.data.submission import build_submission, validate_submission
from eedi.errors import ConfigError, DataError, EediError
from eedi.evaluation.metrics import candidates_to_lists
from eedi.evaluation.summary import validation_headline
from eedi.fileio import read_json
from eedi.layout import RunLayout
from eedi.rerank.schemes import CPU_KINDS, load_cpu_reranker
from eedi.rerank.schemes import rerank as rerank_candidates
from eedi.rerank.scoring import make_scorer
from eedi.retrieval.indexing import TEST_UNSEEN_BOOST
from eedi.retrieval.model import load_encoder, trained_retriever
from eedi.retrieval.search import CandidateRetriever, EmbeddingStore, candidates_frame, embedding_key
from eedi.runtime import resolve
from eedi.serve.labels import Question, RunInfo
from eedi.submit.predict import choose_reranker

log = logging.getLogger(__name__)


class ServeError(EediError):
    """The run directory cannot be served (not a run, no retriever, no reranker when one was asked for)."""


@dataclass(frozen=True)
class Ranked:
    rank: int
    """1-based position in the final ranking."""
    misconception_id: int
    misconception_name: str
    retriever_score: float
    """The retriever's score (cosine + prior + label memory, as ``index`` computes it)."""
    reranker_score: float | None
    """The reranker's label probability; None without reranking or below ``reranker.depth``."""
    score: float
    """The score the ranking is sorted by: the fused score for reranked candidates, else the retriever's."""


def run_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The config a run was made with: ``manifest.json['config']`` (written by every stage), re-validated."""

    manifest = RunLayout(run_dir).manifest
    if not manifest.is_file():
        raise ServeError(f"{run_dir} is not a run directory (no manifest.json): make one with `eedi run`")
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))["config"]
    except (ValueError, KeyError) as err:
        raise ServeError(f"{manifest}: no resolved config in it ({err})") from None
    # run_dir: where the run is now (it may have been moved since it was made)
    raw = apply_overrides(raw, [f"run_dir={run_dir}", *overrides])
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{manifest}: config does not validate: {err}") from None


def retriever_path(run_dir: Path, config: Config) -> Path:
    """The model ``infer`` would use: the full-fit retriever, else the first trained fold's."""
    return trained_retriever(run_dir, config.folds.use)


def run_info(run_dir: Path) -> RunInfo:
    """run_id = the run folder's name @ its train-retriever fingerprint (changes whenever the retriever does)."""

    manifest = json.loads(RunLayout(run_dir).manifest.read_text(encoding="utf-8"))
    fingerprint = manifest.get("stages", {}).get("train-retriever", {}).get("fingerprint", "untrained")
    return RunInfo(
        run_id=f"{run_dir.name}@{fingerprint}", run_dir=str(run_dir.resolve()), git_commit=manifest.get("git_commit")
    )


def served_pairs(items: Sequence[tuple[Question, str]], template: str) -> list[dict]:
    """One pairs.parquet row per (question, wrong answer), keyed ``item{i}``, as
    :func:`eedi.data.pairs.pivot_pairs` builds it from a test.csv row (same fields; a missing id formats as
    pivot_pairs formats it, None), so ``QueryText`` is the training query's text.

    Built directly rather than through pivot_pairs: its DataFrame work was ~20 ms of a ~45 ms single-query request.
    tests/test_serve_api.py checks the two agree for every field a template may use."""
    rows = []
    for i, (q, wrong) in enumerate(items):
        if wrong == q.correct_answer:
            raise ValueError(f"item {i}: the wrong answer must differ from the correct answer")
        row = {
            # Position as QuestionId: unique within the request (the default template does not show it).
            "QuestionId_Answer": f"item{i}",
            "QuestionId": i,
            "WrongAnswer": wrong,
            "split": "serve",
            "ConstructId": q.construct_id,
            "ConstructName": q.construct_name,
            "SubjectId": q.subject_id,
            "SubjectName": q.subject_name,
            "QuestionText": q.question_text,
            "CorrectAnswer": q.correct_answer,
            "CorrectAnswerText": q.answer(q.correct_answer),
            "WrongAnswerText": q.answer(wrong),
            "MisconceptionId": None,
        }
        row["QueryText"] = template.format(**row)
        rows.append(row)
    return rows


class Predictor:
    def __init__(
        self,
        run_dir: str | Path,
        use_reranker: bool | None = None,
        reranker_backend: str = "transformers",
        reranker_model: str | None = None,
        overrides: Sequence[str] = (),
    ):
        """``use_reranker``: None = the run's reranker when it has one; True = required; False = retrieval only.
        ``reranker_model``: auto/merged/gptq/awq (default: the run's ``infer.reranker_model``)."""

        t0 = time.perf_counter()
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise ServeError(f"run directory {self.run_dir} does not exist")
        extra = [f"infer.backend={reranker_backend}"]
        if reranker_model:
            extra.append(f"infer.reranker_model={reranker_model}")
        self.config = run_config(self.run_dir, [*extra, *overrides])
        self.run = run_info(self.run_dir)
        self.retriever_path = retriever_path(self.run_dir, self.config)
        for name in ("misconceptions.parquet", "pairs.parquet"):
            if not (self.run_dir / name).is_file():
                raise ServeError(f"{self.run_dir / name} is missing: run `eedi prepare` first")
        self.misconceptions = load_misconceptions(self.run_dir)
        self.names = dict(
            zip(self.misconceptions["MisconceptionId"].astype(int), self.misconceptions["MisconceptionName"])
        )
        pairs = load_pairs(self.run_dir)
        labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
        self._labelled = labelled
        placement = resolve(self.config.runtime)
        # The index stage saved what this model embedded: the misconceptions and the training queries.
        key = embedding_key(self.retriever_path, self.config.retriever.encode_batch_size)
        store_path = RunLayout(self.run_dir).embeddings(self.retriever_path.parent.name)
        store = EmbeddingStore.load(store_path, key)
        log.info("embeddings: %s", f"loaded from {store_path}" if store else "none stored for this model: encoding")
        self.retriever = CandidateRetriever(
            load_encoder(self.retriever_path, placement), self.misconceptions, self.config, labelled, store=store
        )
        self.unseen_boost = self._run_unseen_boost()
        self.retriever.set_unseen_boost(self.unseen_boost)
        self.top_k = min(self.config.index.top_k, len(self.misconceptions))
        self.reranker_name: str | None = None
        self.reranker_path: Path | None = None
        self.scorer = None
        if use_reranker is not False:
            self._load_reranker(required=use_reranker is True)
        self._lock = threading.Lock()
        self.load_seconds = round(time.perf_counter() - t0, 2)
        log.info(
            "serving %s: retriever %s, reranker %s (%s backend), %d misconceptions, %d labelled pairs "
            "in the label memory; loaded in %.1fs",
            self.run.run_id,
            self.retriever_path,
            self.reranker_name,
            self._reranker_backend(),
            len(self.misconceptions),
            len(labelled),
            self.load_seconds,
        )

    def _load_reranker(self, required: bool) -> None:

        if not self.config.reranker.enabled:
            if required:
                raise ServeError(f"{self.run_dir} was made with reranker.enabled=false: it has no reranker")
            return
        try:
            self.reranker_name, self.reranker_path = choose_reranker(self.config, self.run_dir)
        except FileNotFoundError as err:
            if required:
                raise ServeError(str(err)) from None
            log.info("no reranker to serve (%s): retrieval only", err)
            return
        if self.config.reranker.kind in CPU_KINDS:
            self.scorer = load_cpu_reranker(self.config, self.reranker_path, self._labelled, self.misconceptions)
        else:
            self.scorer = make_scorer(self.reranker_path, self.config.infer.backend, self.config)

    def _reranker_backend(self) -> str:
        return {"features": "lightgbm", "pointwise": "sentence-transformers"}.get(
            self.config.reranker.kind, self.config.infer.backend
        )

    @property
    def has_reranker(self) -> bool:
        return self.scorer is not None

    # ------------------------------------------------------------------ ranking

    def _pairs(self, items: Sequence[tuple[Question, str]]) -> pd.DataFrame:
        """pairs.parquet-shaped rows, one per item, keyed ``item{i}``, with the run's query text."""
        return pd.DataFrame(served_pairs(items, self.config.data.query_template), columns=PAIR_COLUMNS)

    def _run_unseen_boost(self) -> float:
        """The unseen boost for single requests: with ``index.unseen_top1_share``, the one the index stage
        calibrated on the run's test rows (a few requests are too few to calibrate on), else ``index.unseen_boost``."""
        if self.config.index.unseen_top1_share is None:
            return self.config.index.unseen_boost
        manifest = read_json(RunLayout(self.run_dir).manifest, default={}) or {}
        boost = manifest.get("stages", {}).get("index", {}).get("summary", {}).get(TEST_UNSEEN_BOOST)
        if boost is None:
            log.warning(
                "index.unseen_top1_share is set but the run's index stage calibrated no boost (no test rows): "
                "single requests use index.unseen_boost=%s",
                self.config.index.unseen_boost,
            )
            return self.config.index.unseen_boost
        return float(boost)

    def _rank(self, pairs: pd.DataFrame, rerank: bool, calibrate: bool = False) -> pd.DataFrame:
        """Long table: QuestionId_Answer, final_rank (0-based), MisconceptionId, score, reranker_score, final_score.
        ``calibrate``: a whole test set, on which the unseen boost is calibrated (``index.unseen_top1_share``)."""

        keys = pairs["QuestionId_Answer"].tolist()
        share = self.config.index.unseen_top1_share if calibrate else None
        with self._lock:
            scores, ids = self.retriever.search(pairs["QueryText"].tolist(), unseen_top1_share=share)
            candidates = candidates_frame(keys, scores, ids, -1, "serve")
            if not rerank:
                return candidates.assign(
                    final_rank=candidates["rank"], reranker_score=np.nan, final_score=candidates["score"]
                )
            return rerank_candidates(
                self.config,
                self.reranker_path,
                candidates,
                pairs,
                self.misconceptions,
                self.config.infer.backend,
                scorer=self.scorer,
            )

    def resolve_rerank(self, rerank: bool | None) -> bool:
        if rerank and not self.has_reranker:
            raise ValueError(
                "this server has no reranker loaded: ask with rerank=false "
                "(or start it with --reranker on a run that has one)"
            )
        return self.has_reranker if rerank is None else bool(rerank)

    def predict(
        self, items: Sequence[tuple[Question, str]], top_k: int = 25, rerank: bool | None = None
    ) -> list[list[Ranked]]:
        """For each (question, wrong answer letter): its top ``top_k`` misconceptions, best first."""
        if not items:
            return []
        if not 1 <= top_k <= self.top_k:
            raise ValueError(f"top_k must be between 1 and {self.top_k} (the run's index.top_k), got {top_k}")
        rows = served_pairs(items, self.config.data.query_template)
        if not self.resolve_rerank(rerank):
            # Retrieval only: straight from the search arrays (no DataFrame round trip on the fast path).
            with self._lock:
                scores, ids = self.retriever.search([row["QueryText"] for row in rows])
            return [
                [
                    Ranked(
                        rank=j + 1,
                        misconception_id=int(m),
                        misconception_name=self.names[int(m)],
                        retriever_score=float(score),
                        reranker_score=None,
                        score=float(score),
                    )
                    for j, (m, score) in enumerate(zip(ids[i, :top_k], scores[i, :top_k]))
                ]
                for i in range(len(items))
            ]
        ranked = self._rank(pd.DataFrame(rows, columns=PAIR_COLUMNS), rerank=True).sort_values(
            "final_rank", kind="stable"
        )
        groups = dict(iter(ranked.groupby("QuestionId_Answer", sort=False)))
        out = []
        for i in range(len(items)):
            rows = groups[f"item{i}"].head(top_k)
            out.append(
                [
                    Ranked(
                        rank=int(r.final_rank) + 1,
                        misconception_id=int(r.MisconceptionId),
                        misconception_name=self.names[int(r.MisconceptionId)],
                        retriever_score=float(r.score),
                        reranker_score=None if math.isnan(r.reranker_score) else float(r.reranker_score),
                        score=float(r.final_score) if not math.isnan(r.final_score) else float(r.score),
                    )
                    for r in rows.itertuples(index=False)
                ]
            )
        return out

    def locate(
        self, question: Question, wrong_answer: str, misconception_id: int, rerank: bool | None = None
    ) -> Ranked | None:
        """Where the model ranks ``misconception_id`` for this pair (None: outside its top index.top_k)."""
        for entry in self.predict([(question, wrong_answer)], top_k=self.top_k, rerank=rerank)[0]:
            if entry.misconception_id == misconception_id:
                return entry
        return None

    def submission(self, test_csv: bytes, rerank: bool | None = None, max_questions: int | None = None) -> bytes:
        """A Kaggle ``test.csv`` -> ``submission.csv`` bytes, as ``infer`` writes it (25 distinct ids per wrong answer).

        Raises DataError (message naming the row and column) for a test.csv that ``eedi prepare`` would reject."""

        with tempfile.TemporaryDirectory(prefix="eedi-serve-") as tmp:
            path = Path(tmp) / "test.csv"
            path.write_bytes(test_csv)
            try:
                test = load_questions(path, with_labels=False, known_ids=None)
            except DataError as err:
                # The client uploaded "test.csv": name that, not our temporary copy.
                message = str(err).split(": ", 1)[1]  # DataError's text is "<where>: <message>"
                raise DataError("test.csv", message, row=err.row, column=err.column) from None
        if max_questions is not None and len(test) > max_questions:
            raise DataError("test.csv", f"{len(test)} questions: this server takes at most {max_questions} per upload")
        pairs = pivot_pairs(test, "test", self.config.data.query_template)
        ranked = self._rank(pairs, self.resolve_rerank(rerank), calibrate=True)
        lists = candidates_to_lists(ranked.assign(rank=ranked["final_rank"]))
        submission = build_submission(lists, pairs)
        validate_submission(submission, None, None, known_ids=self.names.keys())
        buffer = io.StringIO()
        submission.to_csv(buffer, index=False)
        return buffer.getvalue().encode("utf-8")

    def health(self) -> dict:
        return {
            "ready": True,
            "run_id": self.run.run_id,
            "run_dir": self.run.run_dir,
            "git_commit": self.run.git_commit,
            "retriever": str(self.retriever_path),
            "reranker": self.reranker_name,
            "reranker_path": str(self.reranker_path) if self.reranker_path else None,
            "reranker_backend": self._reranker_backend() if self.has_reranker else None,
            "misconceptions": len(self.misconceptions),
            "max_top_k": self.top_k,
            "load_seconds": self.load_seconds,
            "unseen_boost": self.unseen_boost,
            "validation": validation_headline(read_json(RunLayout(self.run.run_dir).metrics, default={}) or {}),
        }

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None
