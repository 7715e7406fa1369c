"""Reading and strictly validating a Kaggle competition folder (train.csv, test.csv, mapping, sample submission)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eedi.data.schema import (
    LETTERS,
    MAPPING_COLUMNS,
    MISCONCEPTION_COLUMNS,
    QUESTION_COLUMNS,
    SUBMISSION_COLUMNS,
    TRAIN_COLUMNS,
)
from eedi.errors import DataError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading


def read_csv_strict(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV as strings, rejecting missing, empty, non-UTF-8 files and missing columns."""
    if not path.is_file():
        raise DataError(path, "file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(path, "file is empty")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            path, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at line {line})", row=line - 1 if line > 1 else None
        ) from None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.ParserError as err:
        raise DataError(path, f"cannot parse CSV: {err}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(path, f"missing required column(s) {missing}; found {list(df.columns)}", column=missing[0])
    if df.empty:
        raise DataError(path, "file has a header but no rows")
    return df


def _int_column(df: pd.DataFrame, column: str, path: Path, allow_empty: bool = False) -> pd.Series:
    """Parse an integer column (Kaggle writes some as floats like '1672.0')."""
    values = df[column].str.strip()
    numeric = pd.to_numeric(values.where(values != ""), errors="coerce")
    for i, (text, num) in enumerate(zip(values, numeric), start=1):
        if text == "":
            if not allow_empty:
                raise DataError(path, "empty value", row=i, column=column)
        elif pd.isna(num) or float(num) != int(num):
            raise DataError(path, f"not an integer: {text!r}", row=i, column=column)
    return numeric.astype("Int64")


def load_mapping(path: Path) -> pd.DataFrame:
    df = read_csv_strict(path, MAPPING_COLUMNS)
    df["MisconceptionId"] = _int_column(df, "MisconceptionId", path)
    for i, name in enumerate(df["MisconceptionName"], start=1):
        if not name.strip():
            raise DataError(path, "empty misconception name", row=i, column="MisconceptionName")
    _reject_duplicates(df, "MisconceptionId", path)
    return df[MAPPING_COLUMNS].astype({"MisconceptionId": "int64"}).reset_index(drop=True)


def _reject_duplicates(df: pd.DataFrame, column: str, path: Path) -> None:
    dup = df[column].duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(path, f"duplicate {column} {df[column].iloc[i]}", row=i + 1, column=column)


def question_problem(row: Mapping[str, str]) -> tuple[str, str] | None:
    """The first Kaggle-schema problem of one question row as (column, message), None if it is valid.

    Shared by the CSV loader (which raises on it) and the synthetic-question validator (which counts it).
    """
    if str(row["CorrectAnswer"]).strip() not in LETTERS:
        return "CorrectAnswer", f"CorrectAnswer must be one of A-D, got {row['CorrectAnswer']!r}"
    if not str(row["QuestionText"]).strip():
        return "QuestionText", "empty question text"
    for x in LETTERS:
        if not str(row[f"Answer{x}Text"]).strip():
            return f"Answer{x}Text", f"empty answer text for answer {x}"
    return None


def load_questions(path: Path, with_labels: bool, known_ids: set[int] | None) -> pd.DataFrame:
    """Load train.csv (with_labels) or test.csv and validate every row."""
    df = read_csv_strict(path, TRAIN_COLUMNS if with_labels else QUESTION_COLUMNS)
    df["QuestionId"] = _int_column(df, "QuestionId", path)
    for column in ("ConstructId", "SubjectId"):
        df[column] = _int_column(df, column, path, allow_empty=True)
    _reject_duplicates(df, "QuestionId", path)
    for i, row in enumerate(df.to_dict("records"), start=1):
        problem = question_problem(row)
        if problem is not None:
            raise DataError(path, problem[1], row=i, column=problem[0])
    df["CorrectAnswer"] = df["CorrectAnswer"].str.strip()
    if with_labels:
        for column in MISCONCEPTION_COLUMNS:
            df[column] = _int_column(df, column, path, allow_empty=True)
        for i, row in enumerate(df.itertuples(index=False), start=1):
            for x in LETTERS:
                column = f"Misconception{x}Id"
                value = getattr(row, column)
                if pd.isna(value):
                    continue
                if x == row.CorrectAnswer:
                    raise DataError(path, f"the correct answer {x} has a misconception ({value})", row=i, column=column)
                if known_ids is not None and int(value) not in known_ids:
                    raise DataError(
                        path, f"MisconceptionId {value} is not in misconception_mapping.csv", row=i, column=column
                    )
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- stage


@dataclass
class KaggleData:
    mapping: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame | None
    sample_submission: pd.DataFrame | None


def load_kaggle_dir(data_dir: Path) -> KaggleData:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data directory not found")
    mapping = load_mapping(data_dir / "misconception_mapping.csv")
    known = set(mapping["MisconceptionId"].tolist())
    train = load_questions(data_dir / "train.csv", with_labels=True, known_ids=known)
    test = None
    if (data_dir / "test.csv").exists():
        test = load_questions(data_dir / "test.csv", with_labels=False, known_ids=None)
    sample = None
    if (data_dir / "sample_submission.csv").exists():
        sample = read_csv_strict(data_dir / "sample_submission.csv", SUBMISSION_COLUMNS)
    return KaggleData(mapping, train, test, sample)
