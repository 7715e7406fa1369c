"""Parsing and validating one generated question (JSON fields, Kaggle-schema checks, length bounds)."""

from __future__ import annotations

import json

from eedi.data.kaggle import question_problem
from eedi.data.schema import LETTERS
from eedi.synthesis.prompts import (
    OUTPUT_FIELDS,
)

# Why a completion was not kept, in the order the checks run.
REASONS = (
    "unparsable",  # not one JSON object (cut off by sampling.max_tokens)
    "missing_field",  # a required field absent or not a string
    "bad_correct_letter",  # CorrectAnswer not one of A-D
    "empty_question",
    "empty_answer",
    "empty_construct_or_subject",
    "bad_target_letter",  # MisconceptionAnswer not one of A-D
    "target_is_correct",  # the misconception's answer is the correct answer
    "duplicate_answers",  # two answers equal (ignoring case and spacing)
    "question_length",  # QuestionText outside synthetic.question_chars
    "answer_length",  # an answer outside synthetic.answer_chars
    "judge_invalid",  # the judge's reply is not a digit 1-5
    "judge_below_threshold",
    "exact_duplicate",  # same question and distractor as a real pair or a kept synthetic row
    "near_duplicate",  # cosine >= dedup.near_duplicate_threshold
    "over_per_target",  # valid, but the target already has per_target better questions
)
_PROBLEM_REASON = {"CorrectAnswer": "bad_correct_letter", "QuestionText": "empty_question"}


# --------------------------------------------------------------------------- validation


def parse_completion(text: str) -> tuple[dict[str, str] | None, str | None]:
    """(fields, None) for a completion holding every output field as a string, else (None, reason)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None, "unparsable"
    if not isinstance(obj, dict):
        return None, "unparsable"
    if any(not isinstance(obj.get(name), str) for name in OUTPUT_FIELDS):
        return None, "missing_field"
    return {name: obj[name].strip() for name in OUTPUT_FIELDS}, None


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def validate_question(
    fields: dict[str, str], question_chars: tuple[int, int], answer_chars: tuple[int, int]
) -> str | None:
    """The first reason (see REASONS) the parsed question can't be used, None if it is valid."""
    problem = question_problem(fields)
    if problem is not None:
        return _PROBLEM_REASON.get(problem[0], "empty_answer")
    if not fields["ConstructName"] or not fields["SubjectName"]:
        return "empty_construct_or_subject"
    correct, target = fields["CorrectAnswer"], fields["MisconceptionAnswer"]
    if target not in LETTERS:
        return "bad_target_letter"
    if target == correct:
        return "target_is_correct"
    answers = [fields[f"Answer{x}Text"] for x in LETTERS]
    if len({_norm(a) for a in answers}) < len(LETTERS):
        return "duplicate_answers"
    if not question_chars[0] <= len(fields["QuestionText"]) <= question_chars[1]:
        return "question_length"
    if any(not answer_chars[0] <= len(a) <= answer_chars[1] for a in answers):
        return "answer_length"
    return None
