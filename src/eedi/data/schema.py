"""Column names of the Kaggle CSVs and of the prepare stage's tables (the data contract)."""

from __future__ import annotations

LETTERS = ("A", "B", "C", "D")
QUESTION_COLUMNS = [
    "QuestionId",
    "ConstructId",
    "ConstructName",
    "SubjectId",
    "SubjectName",
    "CorrectAnswer",
    "QuestionText",
    *[f"Answer{x}Text" for x in LETTERS],
]
MISCONCEPTION_COLUMNS = [f"Misconception{x}Id" for x in LETTERS]
TRAIN_COLUMNS = QUESTION_COLUMNS + MISCONCEPTION_COLUMNS
MAPPING_COLUMNS = ["MisconceptionId", "MisconceptionName"]
SUBMISSION_COLUMNS = ["QuestionId_Answer", "MisconceptionId"]

PAIR_COLUMNS = [
    "QuestionId_Answer",
    "QuestionId",
    "WrongAnswer",
    "split",
    "ConstructId",
    "ConstructName",
    "SubjectId",
    "SubjectName",
    "QuestionText",
    "CorrectAnswer",
    "CorrectAnswerText",
    "WrongAnswerText",
    "MisconceptionId",
    "QueryText",
]

K = 25
"""Kaggle scores the first 25 ids of each row (MAP@25): a submission row holds exactly this many."""

# candidates/<name>.parquet (index stage): rank is 0-based; part is train, val or test.
CANDIDATE_COLUMNS = ["QuestionId_Answer", "rank", "MisconceptionId", "score", "fold", "part"]
# reranked/fold_k.parquet (train-reranker stage)
RERANKED_COLUMNS = CANDIDATE_COLUMNS + ["reranker_score", "final_score", "final_rank"]
