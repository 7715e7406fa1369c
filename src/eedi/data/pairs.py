"""The four answers of a question pivoted into one (question, wrong answer) pair each, with its query text."""

from __future__ import annotations

import pandas as pd

from eedi.config import DataConfig
from eedi.data.kaggle import KaggleData
from eedi.data.schema import LETTERS, MISCONCEPTION_COLUMNS, PAIR_COLUMNS

# --------------------------------------------------------------------------- pivot


def render_query(pairs: pd.DataFrame, template: str) -> pd.Series:
    return pd.Series([template.format(**row) for row in pairs.to_dict("records")], index=pairs.index, dtype="object")


def pivot_pairs(questions: pd.DataFrame, split: str, template: str) -> pd.DataFrame:
    """One row per (question, wrong answer). MisconceptionId is null when untagged (or in test)."""
    rows = []
    labelled = all(c in questions.columns for c in MISCONCEPTION_COLUMNS)
    for q in questions.to_dict("records"):
        for x in LETTERS:
            if x == q["CorrectAnswer"]:
                continue
            rows.append(
                {
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
                }
            )
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS[:-1])
    for column in ("QuestionId", "ConstructId", "SubjectId", "MisconceptionId"):
        pairs[column] = pairs[column].astype("Int64")
    pairs["QueryText"] = render_query(pairs, template) if len(pairs) else pd.Series(dtype="object")
    return pairs


def build_pairs(data: KaggleData, cfg: DataConfig) -> pd.DataFrame:
    parts = [pivot_pairs(data.train, "train", cfg.query_template)]
    if data.test is not None:
        parts.append(pivot_pairs(data.test, "test", cfg.query_template))
    return pd.concat(parts, ignore_index=True)
