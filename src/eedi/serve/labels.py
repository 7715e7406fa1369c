"""Labels accepted in ``eedi serve``: a SQLite store in the run directory, exported as Kaggle ``train.csv`` rows.

Storage (``RUN/labels.sqlite``):

* WAL journal, ``synchronous=FULL``: a label is on disk when :meth:`LabelStore.add` returns, and readers
  never block the writer. A killed server loses nothing that was committed.
* One transaction per label (``BEGIN IMMEDIATE`` … ``COMMIT``): the question row and the label row are
  written together or not at all. Concurrent writers (threads of one server, several processes) wait on
  SQLite's lock (``busy_timeout``) instead of failing.
* Every label carries who (``labeller``), when (``created_at``, UTC), the model's 1-based rank of the
  accepted misconception (``model_rank``; NULL when the labeller picked one outside the ranked list), its
  scores, and the run it came from (``run_id``, ``run_dir``, ``git_commit``).

QuestionIds. A question typed into the page has no Kaggle QuestionId. Labels of the same question (one per
wrong answer) must share one, so that the export merges them into one ``train.csv`` row. A question is
therefore identified by its content (sha256 of the question, the four answers, the correct letter,
construct and subject): the first label of a question gives it ``SERVED_QUESTION_ID_BASE + n`` (n = 1, 2, …
in order of first label), far above the competition's ids (0 … ~2,000 for train and test), so exported
rows never collide with a Kaggle ``train.csv`` they are appended to. A client that labels an existing
Kaggle question passes its ``question_id``; the same id naming a different content is an error.

Export: one row per question in the Kaggle ``train.csv`` schema; when a wrong answer was labelled more than
once (a correction, or two labellers), the latest label wins.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from eedi.data.schema import LETTERS, TRAIN_COLUMNS
from eedi.errors import EediError
from eedi.fileio import write_text
from eedi.layout import RunLayout

SERVED_QUESTION_ID_BASE = 10_000_000
BUSY_TIMEOUT_MS = 30_000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS questions (
    question_id    INTEGER PRIMARY KEY,
    content_sha256 TEXT NOT NULL UNIQUE,
    served         INTEGER NOT NULL,          -- 1: id assigned here, 0: id given by the client
    construct_id   INTEGER,
    construct_name TEXT NOT NULL,
    subject_id     INTEGER,
    subject_name   TEXT NOT NULL,
    correct_answer TEXT NOT NULL CHECK (correct_answer IN ('A', 'B', 'C', 'D')),
    question_text  TEXT NOT NULL,
    answer_a_text  TEXT NOT NULL,
    answer_b_text  TEXT NOT NULL,
    answer_c_text  TEXT NOT NULL,
    answer_d_text  TEXT NOT NULL,
    created_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    label_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at         TEXT NOT NULL,         -- UTC, ISO 8601
    labeller           TEXT NOT NULL CHECK (length(labeller) > 0),
    question_id        INTEGER NOT NULL REFERENCES questions (question_id),
    wrong_answer       TEXT NOT NULL CHECK (wrong_answer IN ('A', 'B', 'C', 'D')),
    misconception_id   INTEGER NOT NULL,
    misconception_name TEXT NOT NULL,
    model_rank         INTEGER CHECK (model_rank IS NULL OR model_rank >= 1),
    retriever_score    REAL,
    reranker_score     REAL,
    reranked           INTEGER NOT NULL,
    run_id             TEXT NOT NULL,
    run_dir            TEXT NOT NULL,
    git_commit         TEXT
);
CREATE INDEX IF NOT EXISTS labels_by_question ON labels (question_id, wrong_answer, label_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '1'), ('served_question_id_base', '{SERVED_QUESTION_ID_BASE}');
"""


class LabelError(EediError, ValueError):
    """A label that cannot be stored (bad letters, a QuestionId that names another question)."""


@dataclass(frozen=True)
class Question:
    question_text: str
    answer_a_text: str
    answer_b_text: str
    answer_c_text: str
    answer_d_text: str
    correct_answer: str
    construct_name: str = ""
    subject_name: str = ""
    construct_id: int | None = None
    subject_id: int | None = None

    def answer(self, letter: str) -> str:
        return getattr(self, f"answer_{letter.lower()}_text")

    def content_sha256(self) -> str:
        fields = asdict(self)
        return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Label:
    question: Question
    wrong_answer: str
    misconception_id: int
    misconception_name: str
    labeller: str
    model_rank: int | None
    retriever_score: float | None
    reranker_score: float | None
    reranked: bool
    question_id: int | None = None
    """The Kaggle QuestionId when the client labels a known question; None: assigned from the content."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    run_dir: str
    git_commit: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LabelStore:
    """The run's label database. Safe to share between threads: every call opens its own connection."""

    def __init__(self, path: str | Path, run: RunInfo):
        self.path = Path(path)
        self.run = run
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # WAL is a property of the database file: set once, every later connection uses it.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a network drive?")
            conn.executescript(SCHEMA)

    @classmethod
    def in_run_dir(cls, run_dir: str | Path, run: RunInfo) -> LabelStore:
        return cls(RunLayout(run_dir).labels_db, run)

    def _connect(self) -> _Closing:
        # isolation_level=None: no implicit transactions; each write says BEGIN IMMEDIATE itself, so it takes
        # the write lock up front (no deadlock-prone upgrade from a read lock) and waits for it up to the timeout.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return _Closing(conn)

    # ------------------------------------------------------------------ writing

    def add(self, label: Label) -> dict:
        """Store one label in its own transaction; returns the stored row (with its label_id and QuestionId)."""
        q = label.question
        if q.correct_answer not in LETTERS or label.wrong_answer not in LETTERS:
            raise LabelError(f"answers are A-D, got correct {q.correct_answer!r}, wrong {label.wrong_answer!r}")
        if label.wrong_answer == q.correct_answer:
            raise LabelError(
                f"answer {label.wrong_answer} is the correct answer: only wrong answers get a misconception"
            )
        if not label.labeller.strip():
            raise LabelError("labeller is empty: every label says who made it")
        sha = q.content_sha256()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                question_id = self._question_id(conn, q, sha, label.question_id)
                cursor = conn.execute(
                    "INSERT INTO labels (created_at, labeller, question_id, wrong_answer, misconception_id, "
                    "misconception_name, model_rank, retriever_score, reranker_score, reranked, run_id, run_dir, "
                    "git_commit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _now(),
                        label.labeller.strip(),
                        question_id,
                        label.wrong_answer,
                        int(label.misconception_id),
                        label.misconception_name,
                        label.model_rank,
                        label.retriever_score,
                        label.reranker_score,
                        int(label.reranked),
                        self.run.run_id,
                        self.run.run_dir,
                        self.run.git_commit,
                    ),
                )
                label_id = cursor.lastrowid
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(label_id)

    def _question_id(self, conn: sqlite3.Connection, q: Question, sha: str, given: int | None) -> int:
        row = conn.execute("SELECT question_id FROM questions WHERE content_sha256 = ?", (sha,)).fetchone()
        if row is not None:
            if given is not None and given != row["question_id"]:
                raise LabelError(f"this question is already stored as QuestionId {row['question_id']}, not {given}")
            return int(row["question_id"])
        if given is not None:
            if conn.execute("SELECT 1 FROM questions WHERE question_id = ?", (given,)).fetchone():
                raise LabelError(f"QuestionId {given} already names a different question (its text or answers differ)")
            question_id, served = int(given), 0
        else:
            top = conn.execute("SELECT max(question_id) FROM questions WHERE served = 1").fetchone()[0]
            question_id, served = max(int(top or SERVED_QUESTION_ID_BASE), SERVED_QUESTION_ID_BASE) + 1, 1
        conn.execute(
            "INSERT INTO questions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                question_id,
                sha,
                served,
                q.construct_id,
                q.construct_name,
                q.subject_id,
                q.subject_name,
                q.correct_answer,
                q.question_text,
                q.answer_a_text,
                q.answer_b_text,
                q.answer_c_text,
                q.answer_d_text,
                _now(),
            ),
        )
        return question_id

    # ------------------------------------------------------------------ reading

    def get(self, label_id: int) -> dict:
        with self._connect() as conn:
            row = conn.execute(_SELECT + " WHERE l.label_id = ?", (label_id,)).fetchone()
        if row is None:
            raise KeyError(f"no label {label_id}")
        return dict(row)

    def labels(self, limit: int | None = None) -> list[dict]:
        """Labels, newest first."""
        query = _SELECT + " ORDER BY l.label_id DESC" + (" LIMIT ?" if limit is not None else "")
        with self._connect() as conn:
            return [dict(r) for r in conn.execute(query, (limit,) if limit is not None else ())]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM labels").fetchone()[0])

    def export(self) -> pd.DataFrame:
        """The labelled questions as Kaggle ``train.csv`` rows (columns in Kaggle's order, ids as Int64).

        The latest label of each (question, wrong answer) wins; answers without a label stay empty."""
        with self._connect() as conn:
            questions = [
                dict(r)
                for r in conn.execute(
                    "SELECT * FROM questions WHERE question_id IN (SELECT question_id FROM labels) ORDER BY question_id"
                )
            ]
            latest = conn.execute(
                "SELECT question_id, wrong_answer, misconception_id FROM labels WHERE label_id IN "
                "(SELECT max(label_id) FROM labels GROUP BY question_id, wrong_answer)"
            ).fetchall()
        chosen = {(r["question_id"], r["wrong_answer"]): int(r["misconception_id"]) for r in latest}
        rows = []
        for q in questions:
            row = {
                "QuestionId": q["question_id"],
                "ConstructId": q["construct_id"],
                "ConstructName": q["construct_name"],
                "SubjectId": q["subject_id"],
                "SubjectName": q["subject_name"],
                "CorrectAnswer": q["correct_answer"],
                "QuestionText": q["question_text"],
            }
            for x in LETTERS:
                row[f"Answer{x}Text"] = q[f"answer_{x.lower()}_text"]
            for x in LETTERS:
                row[f"Misconception{x}Id"] = chosen.get((q["question_id"], x))
            rows.append(row)
        frame = pd.DataFrame(rows, columns=TRAIN_COLUMNS)
        for column in ("QuestionId", "ConstructId", "SubjectId", *[f"Misconception{x}Id" for x in LETTERS]):
            frame[column] = frame[column].astype("Int64")
        return frame

    def export_csv(self, out: str | Path | None = None) -> str:
        """The export as CSV text (Kaggle writes empty cells for missing ids); also written to ``out`` if given."""
        text = self.export().to_csv(index=False)
        if out is not None:
            write_text(out, text)
        return text


_SELECT = (
    "SELECT l.label_id, l.created_at, l.labeller, l.question_id, l.wrong_answer, l.misconception_id, "
    "l.misconception_name, l.model_rank, l.retriever_score, l.reranker_score, l.reranked, l.run_id, l.run_dir, "
    "l.git_commit, q.question_text, q.correct_answer, q.construct_name, q.subject_name, "
    "CASE l.wrong_answer WHEN 'A' THEN q.answer_a_text WHEN 'B' THEN q.answer_b_text "
    "WHEN 'C' THEN q.answer_c_text ELSE q.answer_d_text END AS wrong_answer_text "
    "FROM labels l JOIN questions q USING (question_id)"
)


class _Closing:
    """``with store._connect() as conn``: the connection, closed on exit (sqlite3's own ``with`` only commits)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc) -> None:
        self.conn.close()
