"""Shared by the serve tests: one Predictor per (run, reranker) for the whole session, sample questions as items.

The predictor loads the shared run's real retriever and reranker (tests/conftest.py: ``reranked_sample``);
loading costs seconds, so test files share one instance through this cache instead of a fixture per module."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TEST = REPO / "data" / "sample" / "test.csv"


@functools.cache
def shared_predictor(run_dir: str, use_reranker: bool):
    from eedi.serve.predictor import Predictor

    # merged: the full-precision reranker (the run may or may not hold quantized ones, depending on test order).
    return Predictor(
        run_dir,
        use_reranker=use_reranker,
        reranker_backend="transformers",
        reranker_model="merged" if use_reranker else None,
    )


def sample_items(n: int | None = None) -> list[dict]:
    """Items (API shape) for the sample test.csv's questions, each with its first wrong answer."""
    test = pd.read_csv(SAMPLE_TEST, dtype=str, keep_default_na=False)
    items = []
    for row in test.head(n).to_dict("records"):
        wrong = next(x for x in "ABCD" if x != row["CorrectAnswer"])
        items.append(
            {
                "question_text": row["QuestionText"],
                **{f"answer_{x.lower()}_text": row[f"Answer{x}Text"] for x in "ABCD"},
                "correct_answer": row["CorrectAnswer"],
                "wrong_answer": wrong,
                "construct_name": row["ConstructName"],
                "subject_name": row["SubjectName"],
            }
        )
    return items


def sample_keys(n: int | None = None) -> list[str]:
    """QuestionId_Answer of each item of :func:`sample_items`."""
    test = pd.read_csv(SAMPLE_TEST, dtype=str, keep_default_na=False).head(n)
    return [
        f"{row['QuestionId']}_{next(x for x in 'ABCD' if x != row['CorrectAnswer'])}" for row in test.to_dict("records")
    ]
