"""submission.csv: ``QuestionId_Answer,MisconceptionId`` with 25 space-separated ids per row."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .data import SUBMISSION_COLUMNS, DataError
from .io import write_csv
from .metrics import K


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


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame | None, n_misconceptions: int | None,
                        k: int = K, source: str = "submission.csv") -> None:
    if list(submission.columns) != SUBMISSION_COLUMNS:
        raise DataError(source, f"columns must be {SUBMISSION_COLUMNS}, got {list(submission.columns)}")
    for i, (key, value) in enumerate(submission.itertuples(index=False), start=1):
        parts = str(value).split()
        if len(parts) != k or len(set(parts)) != k:
            raise DataError(source, f"{key}: need {k} distinct ids, got {len(parts)} ({len(set(parts))} distinct)",
                            row=i, column="MisconceptionId")
        for part in parts:
            if not part.isdigit() or (n_misconceptions is not None and int(part) >= n_misconceptions):
                raise DataError(source, f"{key}: invalid misconception id {part!r}", row=i, column="MisconceptionId")
    if sample is not None:
        want, got = set(sample["QuestionId_Answer"]), set(submission["QuestionId_Answer"])
        if want != got:
            raise DataError(source, f"keys differ from sample_submission.csv: {len(want - got)} missing "
                                    f"(e.g. {sorted(want - got)[:3]}), {len(got - want)} extra "
                                    f"(e.g. {sorted(got - want)[:3]})", column="QuestionId_Answer")


def write_submission(path: str | Path, ranked: Mapping[str, Sequence[int]], test_pairs: pd.DataFrame,
                     sample: pd.DataFrame | None = None, n_misconceptions: int | None = None) -> Path:
    submission = build_submission(ranked, test_pairs)
    validate_submission(submission, sample, n_misconceptions)
    return write_csv(path, submission)
