"""Stage 1 (prepare): Kaggle CSVs -> validated (question, wrong answer) pairs + folds.

Reads ``train.csv``, ``misconception_mapping.csv`` and, when present, ``test.csv`` and
``sample_submission.csv`` from ``data.dir``; validates them strictly; pivots the four
answers into one row per wrong answer; renders the query text; and assigns every
training question to a fold.

Outputs (under ``run_dir``), schema documented in README.md:

* ``pairs.parquet`` - one row per (QuestionId, wrong answer letter), train and test.
* ``misconceptions.parquet`` - MisconceptionId, MisconceptionName (the retrieval corpus).
* ``folds.csv`` - QuestionId, fold for every training question.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, DataConfig, FoldsConfig

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")
QUESTION_COLUMNS = [
    "QuestionId", "ConstructId", "ConstructName", "SubjectId", "SubjectName",
    "CorrectAnswer", "QuestionText", *[f"Answer{x}Text" for x in LETTERS],
]
MISCONCEPTION_COLUMNS = [f"Misconception{x}Id" for x in LETTERS]
TRAIN_COLUMNS = QUESTION_COLUMNS + MISCONCEPTION_COLUMNS
MAPPING_COLUMNS = ["MisconceptionId", "MisconceptionName"]
SUBMISSION_COLUMNS = ["QuestionId_Answer", "MisconceptionId"]

PAIR_COLUMNS = [
    "QuestionId_Answer", "QuestionId", "WrongAnswer", "split",
    "ConstructId", "ConstructName", "SubjectId", "SubjectName", "QuestionText",
    "CorrectAnswer", "CorrectAnswerText", "WrongAnswerText", "MisconceptionId", "QueryText",
]


class DataError(ValueError):
    """Bad input data. The message names the file, the row and the column."""

    def __init__(self, file: str | Path, message: str, row: int | None = None, column: str | None = None):
        where = [str(file)]
        if row is not None:
            # row is the 1-based data row; the CSV line adds the header line.
            where.append(f"row {row} (line {row + 1})")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(": ".join([", ".join(where), message]))
        self.file, self.row, self.column = str(file), row, column


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
        raise DataError(path, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at line {line})",
                        row=line - 1 if line > 1 else None) from None
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
                    raise DataError(path, f"the correct answer {x} has a misconception ({value})", row=i,
                                    column=column)
                if known_ids is not None and int(value) not in known_ids:
                    raise DataError(path, f"MisconceptionId {value} is not in misconception_mapping.csv",
                                    row=i, column=column)
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- pivot


def render_query(pairs: pd.DataFrame, template: str) -> pd.Series:
    return pd.Series([template.format(**row) for row in pairs.to_dict("records")], index=pairs.index,
                     dtype="object")


def pivot_pairs(questions: pd.DataFrame, split: str, template: str) -> pd.DataFrame:
    """One row per (question, wrong answer). MisconceptionId is null when untagged (or in test)."""
    rows = []
    labelled = all(c in questions.columns for c in MISCONCEPTION_COLUMNS)
    for q in questions.to_dict("records"):
        for x in LETTERS:
            if x == q["CorrectAnswer"]:
                continue
            rows.append({
                "QuestionId_Answer": f"{q['QuestionId']}_{x}",
                "QuestionId": q["QuestionId"],
                "WrongAnswer": x,
                "split": split,
                "ConstructId": q["ConstructId"],
                "ConstructName": q["ConstructName"],
                "SubjectId": q["SubjectId"],
                "SubjectName": q["SubjectName"],
                "QuestionText": q["QuestionText"],
                "CorrectAnswer": q["CorrectAnswer"],
                "CorrectAnswerText": q[f"Answer{q['CorrectAnswer']}Text"],
                "WrongAnswerText": q[f"Answer{x}Text"],
                "MisconceptionId": q[f"Misconception{x}Id"] if labelled else pd.NA,
            })
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS[:-1])
    for column in ("QuestionId", "ConstructId", "SubjectId", "MisconceptionId"):
        pairs[column] = pairs[column].astype("Int64")
    pairs["QueryText"] = render_query(pairs, template) if len(pairs) else pd.Series(dtype="object")
    return pairs


# --------------------------------------------------------------------------- folds


def assign_folds(pairs: pd.DataFrame, cfg: FoldsConfig) -> pd.DataFrame:
    """Assign each training question to a fold with scikit-learn's GroupKFold.

    mode=group: groups are questions, shuffled with the seed (same seed -> same folds).
    mode=unseen: a share of misconceptions is held out; every question that carries a
    held-out misconception is merged into one group with the other questions carrying it,
    so the whole group lands in one fold and that misconception never occurs in the fold's
    training part. This raises the unseen share of validation, like the competition's test.
    """
    from sklearn.model_selection import GroupKFold

    train = pairs[pairs["split"] == "train"]
    qids = np.array(sorted(train["QuestionId"].unique()), dtype=np.int64)
    if len(qids) < cfg.n_splits:
        raise ValueError(f"folds.n_splits={cfg.n_splits} but only {len(qids)} training questions")
    group_of = {int(q): int(q) for q in qids}
    if cfg.mode == "unseen":
        rng = np.random.default_rng(cfg.seed)
        labelled = train.dropna(subset=["MisconceptionId"])
        mids = np.array(sorted(labelled["MisconceptionId"].astype(int).unique()))
        held = set(rng.choice(mids, size=int(round(cfg.unseen_share * len(mids))), replace=False).tolist())
        # union-find over questions linked by a held-out misconception
        parent = {int(q): int(q) for q in qids}

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for mid, grp in labelled.groupby("MisconceptionId"):
            if int(mid) in held:
                members = [int(q) for q in grp["QuestionId"].unique()]
                for other in members[1:]:
                    parent[find(other)] = find(members[0])
        group_of = {q: find(q) for q in parent}
    groups = np.array([group_of[int(q)] for q in qids])
    splitter = GroupKFold(n_splits=cfg.n_splits, shuffle=True, random_state=cfg.seed)
    fold = np.empty(len(qids), dtype=np.int64)
    for k, (_, val_idx) in enumerate(splitter.split(qids, groups=groups)):
        fold[val_idx] = k
    return pd.DataFrame({"QuestionId": qids, "fold": fold})


def fold_report(pairs: pd.DataFrame, folds: pd.DataFrame) -> dict[str, dict]:
    """Per fold: validation pairs, labelled pairs, and how many have a misconception unseen in training."""
    train = pairs[(pairs["split"] == "train")].merge(folds, on="QuestionId")
    labelled = train.dropna(subset=["MisconceptionId"])
    report = {}
    for k in sorted(folds["fold"].unique()):
        val = labelled[labelled["fold"] == k]
        seen = set(labelled.loc[labelled["fold"] != k, "MisconceptionId"].astype(int))
        unseen = int((~val["MisconceptionId"].astype(int).isin(seen)).sum())
        report[f"fold_{k}"] = {
            "val_questions": int(train.loc[train["fold"] == k, "QuestionId"].nunique()),
            "val_pairs": int((train["fold"] == k).sum()),
            "val_labelled": int(len(val)),
            "val_unseen": unseen,
            "unseen_share": round(unseen / max(len(val), 1), 4),
        }
    return report


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


def build_pairs(data: KaggleData, cfg: DataConfig) -> pd.DataFrame:
    parts = [pivot_pairs(data.train, "train", cfg.query_template)]
    if data.test is not None:
        parts.append(pivot_pairs(data.test, "test", cfg.query_template))
    return pd.concat(parts, ignore_index=True)


def prepare(config: Config) -> dict:
    """Run stage 1. Returns a summary for the manifest."""
    from .io import file_sha256, write_csv, write_json, write_parquet

    data = load_kaggle_dir(config.data.dir)
    pairs = build_pairs(data, config.data)
    folds = assign_folds(pairs, config.folds)
    report = fold_report(pairs, folds)
    run_dir = Path(config.run_dir)
    write_parquet(run_dir / "misconceptions.parquet", data.mapping)
    write_parquet(run_dir / "pairs.parquet", pairs)
    write_csv(run_dir / "folds.csv", folds)
    train_pairs = pairs[pairs["split"] == "train"]
    summary = {
        "train_questions": int(len(data.train)),
        "train_pairs": int(len(train_pairs)),
        "train_labelled_pairs": int(train_pairs["MisconceptionId"].notna().sum()),
        "test_pairs": int((pairs["split"] == "test").sum()),
        "misconceptions": int(len(data.mapping)),
        "folds_sha256": file_sha256(run_dir / "folds.csv"),
        "folds": report,
    }
    write_json(run_dir / "prepare_summary.json", summary)
    for name, fold in report.items():
        log.info("%s: %d val pairs, %d labelled, %d unseen (%.0f%%)", name, fold["val_pairs"],
                 fold["val_labelled"], fold["val_unseen"], 100 * fold["unseen_share"])
    return summary


def load_pairs(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / "pairs.parquet")


def load_folds(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "folds.csv")


def load_misconceptions(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / "misconceptions.parquet")


def train_val_split(pairs: pd.DataFrame, folds: pd.DataFrame, fold: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled training pairs for ``fold`` and its validation pairs. fold=None: everything is training."""
    train = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
    train = train.merge(folds, on="QuestionId", how="left")
    if fold is None:
        return train.reset_index(drop=True), train.iloc[0:0]
    return (train[train["fold"] != fold].reset_index(drop=True),
            train[train["fold"] == fold].reset_index(drop=True))
