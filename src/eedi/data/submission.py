"""submission.csv: ``QuestionId_Answer,MisconceptionId`` with 25 space-separated ids per row."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd

from eedi.data.schema import SUBMISSION_COLUMNS, K
from eedi.errors import DataError
from eedi.fileio import write_csv


def build_submission(ranked: Mapping[str, Sequence[int]], test_pairs: pd.DataFrame, k: int = K) -> pd.DataFrame:
    """One row per wrong answer of test.csv, in test order, with exactly ``k`` distinct ids."""
    expected = test_pairs["QuestionId_Answer"].tolist()
    missing = [key for key in expected if key not in ranked]
    if missing:
        raise ValueError(f"no ranking for {len(missing)} test pair(s), e.g. {missing[:3]}")
    rows = []
    for key in expected:
        ids: list[int] = []
        for mid in ranked[key]:
            if int(mid) not in ids:
                ids.append(int(mid))
            if len(ids) == k:
                break
        if len(ids) < k:
            raise ValueError(f"{key}: only {len(ids)} distinct candidates, need {k}")
        rows.append({"QuestionId_Answer": key, "MisconceptionId": " ".join(map(str, ids))})
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)


def validate_submission(
    submission: pd.DataFrame,
    sample: pd.DataFrame | None,
    n_misconceptions: int | None,
    k: int = K,
    source: str | Path = "submission.csv",
    known_ids: Collection[int] | None = None,
) -> None:
    """Kaggle's format, strictly: exact columns, one row per key, ``k`` distinct integer ids per row.

    Ids must be below ``n_misconceptions`` and/or in ``known_ids`` when those are given; with
    ``sample`` the keys must be exactly the sample's. Errors name the 1-based data row and the column.
    """
    if list(submission.columns) != SUBMISSION_COLUMNS:
        raise DataError(source, f"columns must be {SUBMISSION_COLUMNS}, got {list(submission.columns)}")
    known = None if known_ids is None else {int(i) for i in known_ids}
    first_row: dict[str, int] = {}
    for i, (key, value) in enumerate(submission.itertuples(index=False), start=1):
        key = str(key)
        if not key.strip():
            raise DataError(source, "empty QuestionId_Answer", row=i, column="QuestionId_Answer")
        if key in first_row:
            raise DataError(
                source,
                f"duplicate QuestionId_Answer {key!r} (first at row {first_row[key]})",
                row=i,
                column="QuestionId_Answer",
            )
        first_row[key] = i
        parts = str(value).split()
        if len(parts) != k:
            raise DataError(source, f"{key}: need exactly {k} ids, got {len(parts)}", row=i, column="MisconceptionId")
        for part in parts:
            # isdigit() alone accepts non-ASCII digits such as '²' that int() rejects
            if not (part.isascii() and part.isdigit()):
                reason = "not a non-negative integer"
            elif n_misconceptions is not None and int(part) >= n_misconceptions:
                reason = f"must be below {n_misconceptions}"
            elif known is not None and int(part) not in known:
                reason = "not in misconception_mapping.csv"
            else:
                continue
            raise DataError(
                source, f"{key}: invalid misconception id {part!r} ({reason})", row=i, column="MisconceptionId"
            )
        ids = [int(part) for part in parts]
        if len(set(ids)) != k:
            dups = sorted({x for x in ids if ids.count(x) > 1})
            raise DataError(
                source, f"{key}: duplicate id(s) {dups}: need {k} distinct ids", row=i, column="MisconceptionId"
            )
    if sample is not None:
        want, got = set(sample["QuestionId_Answer"]), set(submission["QuestionId_Answer"])
        if want != got:
            raise DataError(
                source,
                f"keys differ from sample_submission.csv: {len(want - got)} missing "
                f"(e.g. {sorted(want - got)[:3]}), {len(got - want)} extra "
                f"(e.g. {sorted(got - want)[:3]})",
                column="QuestionId_Answer",
            )


def write_submission(
    path: str | Path,
    ranked: Mapping[str, Sequence[int]],
    test_pairs: pd.DataFrame,
    sample: pd.DataFrame | None = None,
    n_misconceptions: int | None = None,
) -> Path:
    submission = build_submission(ranked, test_pairs)
    validate_submission(submission, sample, n_misconceptions)
    return write_csv(path, submission)
