"""A local leaderboard: split a labelled train.csv into a Kaggle-shaped holdout, and score submissions on it.

``make_holdout`` splits by question: the held-out questions become ``test.csv`` (Kaggle test
columns, no labels), their labelled wrong answers become ``labels.csv``. The folder is a normal
Kaggle data folder (``eedi prepare``/``run`` read it as ``data.dir``); ``labels.csv`` is for
``eedi score`` only and must never be given to the model.

``score_submission`` scores a ``submission.csv`` against ``labels.csv`` the way Kaggle scores
this competition (MAP@25 over the labelled rows only), with recall@1/5/25 and, given the
training ``train.csv``, the split into misconceptions seen / unseen in training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from eedi.data.kaggle import (
    _int_column,
    _reject_duplicates,
    load_kaggle_dir,
    load_mapping,
    load_questions,
    read_csv_strict,
)
from eedi.data.schema import LETTERS, MISCONCEPTION_COLUMNS, QUESTION_COLUMNS, SUBMISSION_COLUMNS, TRAIN_COLUMNS
from eedi.data.submission import validate_submission
from eedi.errors import DataError
from eedi.evaluation.metrics import UNSEEN_SHARE, K, ranking_metrics
from eedi.fileio import atomic_dir, file_sha256

LABELS_FILE = "labels.csv"
HOLDOUT_FILE = "holdout.json"
RECALL_KS = (1, 5, 25)


# --------------------------------------------------------------------------- make-holdout


def split_questions(question_ids: np.ndarray, test_share: float, seed: int) -> set[int]:
    """The held-out question ids: a seeded permutation of the sorted ids (same ids + seed -> same split)."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must be between 0 and 1 (exclusive), got {test_share}")
    qids = np.array(sorted(int(q) for q in question_ids), dtype=np.int64)
    if len(qids) < 2:
        raise ValueError(f"need at least 2 questions to split, got {len(qids)}")
    n_test = min(max(int(round(test_share * len(qids))), 1), len(qids) - 1)
    order = np.random.default_rng(seed).permutation(len(qids))
    return {int(q) for q in qids[order[:n_test]]}


def _wrong_answers(questions: pd.DataFrame) -> pd.DataFrame:
    """One row per wrong answer: QuestionId_Answer and MisconceptionId (<NA> when untagged)."""
    rows = []
    for q in questions.to_dict("records"):
        for x in LETTERS:
            if x != q["CorrectAnswer"]:
                rows.append(
                    {"QuestionId_Answer": f"{q['QuestionId']}_{x}", "MisconceptionId": q[f"Misconception{x}Id"]}
                )
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS).astype({"MisconceptionId": "Int64"})


def _line_terminator(path: Path) -> str:
    """The record terminator of a CSV (Kaggle's train.csv uses CRLF), so rows are written back byte for byte."""
    with open(path, "rb") as handle:
        header = handle.readline()
    return "\r\n" if header.endswith(b"\r\n") else "\n"


def _check_out_dir(data_dir: Path, out: Path, force: bool) -> None:
    src, dst = data_dir.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise DataError(out, f"the output folder must not be the input folder or contain it ({data_dir})")
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DataError(out, "folder exists and is not empty (pass --force to replace it)")
        if not (out / HOLDOUT_FILE).is_file():
            # --force replaces a folder make-holdout wrote, never some other folder by mistake
            raise DataError(
                out,
                f"not replacing a non-empty folder without {HOLDOUT_FILE} "
                "(not written by make-holdout): remove it yourself",
            )


def make_holdout(
    data_dir: str | Path, out: str | Path, test_share: float = 0.25, seed: int = 42, force: bool = False
) -> dict:
    """Split ``data_dir/train.csv`` by question into the Kaggle-shaped folder ``out`` (written atomically).

    ``out`` gets train.csv (remaining questions, rows and columns unchanged), test.csv (held-out
    questions, Kaggle test columns), sample_submission.csv (every wrong answer of the test
    questions, as Kaggle's), misconception_mapping.csv (a copy), labels.csv (the labelled wrong
    answers of the test questions: for ``eedi score``, never for the model) and holdout.json.
    Returns the content of holdout.json.
    """
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data directory not found")
    _check_out_dir(data_dir, out, force)
    mapping_path, train_path = data_dir / "misconception_mapping.csv", data_dir / "train.csv"
    mapping = load_mapping(mapping_path)
    train = load_questions(train_path, with_labels=True, known_ids=set(mapping["MisconceptionId"].tolist()))
    raw = read_csv_strict(train_path, TRAIN_COLUMNS)  # the rows as text, written back unchanged
    test_ids = split_questions(train["QuestionId"].to_numpy(), test_share, seed)
    is_test = train["QuestionId"].astype(int).isin(test_ids).to_numpy()

    new_train, test = train[~is_test], train[is_test]
    train_answers, test_answers = _wrong_answers(new_train), _wrong_answers(test)
    labels = test_answers.dropna(subset=["MisconceptionId"]).reset_index(drop=True)
    seen = set(train_answers["MisconceptionId"].dropna().astype(int))
    unseen = ~labels["MisconceptionId"].astype(int).isin(seen)
    sample = test_answers[["QuestionId_Answer"]].assign(MisconceptionId="1 2 3")

    summary = {
        "seed": int(seed),
        "test_share": float(test_share),
        "source_train_sha256": file_sha256(train_path),
        "questions": {"source": int(len(train)), "train": int(len(new_train)), "test": int(len(test))},
        "pairs": {
            "train": int(len(train_answers)),
            "train_labelled": int(train_answers["MisconceptionId"].notna().sum()),
            "test": int(len(test_answers)),
            "test_labelled": int(len(labels)),
        },
        "misconceptions": {
            "mapping": int(len(mapping)),
            "train_distinct": len(seen),
            "test_distinct": int(labels["MisconceptionId"].nunique()),
            "test_distinct_unseen": int(labels.loc[unseen, "MisconceptionId"].nunique()),
        },
        "test_labels_unseen": int(unseen.sum()),
        "test_labels_unseen_share": round(float(unseen.mean()) if len(labels) else 0.0, 4),
        "labels_file": LABELS_FILE,
        "note": f"{LABELS_FILE} holds the answers: it is for `eedi score`, never give it to the model",
    }
    terminator = _line_terminator(train_path)
    with atomic_dir(out) as tmp:
        raw[~is_test].to_csv(tmp / "train.csv", index=False, lineterminator=terminator)
        raw.loc[is_test, QUESTION_COLUMNS].to_csv(tmp / "test.csv", index=False, lineterminator=terminator)
        sample.to_csv(tmp / "sample_submission.csv", index=False)
        labels.to_csv(tmp / LABELS_FILE, index=False)
        shutil.copyfile(mapping_path, tmp / "misconception_mapping.csv")
        # plain write (the folder itself is atomic): io.write_json's mkstemp file would be private (0600)
        (tmp / HOLDOUT_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        load_kaggle_dir(tmp)  # the folder must read back as a Kaggle folder before it is put in place
    return summary


# --------------------------------------------------------------------------- score


def load_labels(path: str | Path, known_ids: set[int] | None = None) -> pd.DataFrame:
    """labels.csv: QuestionId_Answer, MisconceptionId (one integer), unique keys."""
    path = Path(path)
    df = read_csv_strict(path, SUBMISSION_COLUMNS)
    if list(df.columns) != SUBMISSION_COLUMNS:
        raise DataError(path, f"columns must be {SUBMISSION_COLUMNS}, got {list(df.columns)}")
    for i, key in enumerate(df["QuestionId_Answer"], start=1):
        if not key.strip():
            raise DataError(path, "empty QuestionId_Answer", row=i, column="QuestionId_Answer")
    _reject_duplicates(df, "QuestionId_Answer", path)
    df["MisconceptionId"] = _int_column(df, "MisconceptionId", path)
    if known_ids is not None:
        for i, mid in enumerate(df["MisconceptionId"], start=1):
            if int(mid) not in known_ids:
                raise DataError(
                    path, f"MisconceptionId {mid} is not in misconception_mapping.csv", row=i, column="MisconceptionId"
                )
    return df.astype({"MisconceptionId": "int64"})


def score_submission(
    submission: str | Path,
    labels: str | Path,
    train: str | Path | None = None,
    mapping: str | Path | None = None,
    unseen_share: float = UNSEEN_SHARE,
) -> dict:
    """MAP@25 and recall@1/5/25 of ``submission`` on the rows of ``labels``, and with a train.csv
    ``MAP@25 (mix)`` = (1 - unseen_share) x seen + unseen_share x unseen (the competition's test mix).

    ``train`` / ``mapping`` default to train.csv / misconception_mapping.csv beside ``labels``
    when those exist (the make-holdout layout). With a train.csv the metrics are also split by
    whether the label's misconception occurs in it (seen) or not (unseen); with a mapping every
    submitted id must be in it. Submission rows without a label are validated, then ignored
    (Kaggle scores labelled rows only) and counted in ``rows_ignored``.
    """
    submission, labels = Path(submission), Path(labels)
    beside = labels.parent
    if mapping is None and (beside / "misconception_mapping.csv").is_file():
        mapping = beside / "misconception_mapping.csv"
    if train is None and (beside / "train.csv").is_file():
        train = beside / "train.csv"
    known = set(load_mapping(Path(mapping))["MisconceptionId"].tolist()) if mapping is not None else None
    truth = load_labels(labels, known)

    sub = read_csv_strict(submission, SUBMISSION_COLUMNS)
    validate_submission(sub, None, None, k=K, source=submission, known_ids=known)
    ranked = {
        key: [int(x) for x in value.split()] for key, value in zip(sub["QuestionId_Answer"], sub["MisconceptionId"])
    }
    missing = [(i, key) for i, key in enumerate(truth["QuestionId_Answer"], start=1) if key not in ranked]
    if missing:
        shown = ", ".join(key for _, key in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            submission,
            f"{len(missing)} labelled row(s) missing: {shown} (first is row {missing[0][0]} of {labels})",
            column="QuestionId_Answer",
        )

    actual = truth["MisconceptionId"].tolist()
    predicted = [ranked[key] for key in truth["QuestionId_Answer"]]
    seen = None
    if train is not None:
        train_questions = load_questions(Path(train), with_labels=True, known_ids=known)
        seen_ids = set(pd.concat([train_questions[c] for c in MISCONCEPTION_COLUMNS]).dropna().astype(int))
        seen = [mid in seen_ids for mid in actual]
    metrics = ranking_metrics(actual, predicted, seen=seen, recall_ks=RECALL_KS, unseen_share=unseen_share)
    return {
        "submission": str(submission),
        "labels": str(labels),
        "train": None if train is None else str(train),
        "mapping": None if mapping is None else str(mapping),
        "rows_submitted": int(len(sub)),
        "rows_scored": int(len(truth)),
        "rows_ignored": int(len(sub) - len(truth)),
        **metrics,
    }


def format_score(result: dict) -> str:
    """The short human table ``eedi score`` prints."""
    lines = [
        f"{result['submission']}: {result['rows_scored']} labelled rows scored, "
        f"{result['rows_ignored']} submission rows without a label ignored"
    ]
    header = f"{'':8} {'n':>6} {'MAP@25':>8}" + "".join(f" {f'recall@{k}':>10}" for k in RECALL_KS)
    lines.append(header)

    def row(name: str, n: int, suffix: str) -> str:
        cells = [f"{name:8} {n:>6}", f"{result[f'map@25{suffix}']:>8.4f}"]
        for k in RECALL_KS:
            value = result.get(f"recall@{k}{suffix}")
            cells.append(f"{value:>10.4f}" if value is not None else f"{'-':>10}")
        return " ".join(cells)

    lines.append(row("all", result["n"], ""))
    if "n_seen" in result:
        for name in ("seen", "unseen"):
            n = result[f"n_{name}"]
            lines.append(row(name, n, f"_{name}") if n else f"{name:8} {n:>6} {'-':>8}")
        if "map@25_mix" in result:
            share = result["unseen_share"]
            lines.append(
                f"{'mix':8} {'':>6} {result['map@25_mix']:>8.4f}   = {1 - share:g} x seen + {share:g} x unseen"
                " (the competition's test mix; --unseen-share)"
            )
        lines.append(f"(seen = the label's misconception occurs in {result['train']})")
    return "\n".join(lines)
