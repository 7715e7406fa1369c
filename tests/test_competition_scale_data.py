"""benchmarks/competition_scale_data.py --real: a real Kaggle folder padded to the competition's size."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from eedi.data.kaggle import load_kaggle_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from competition_scale_data import build_from_real  # noqa: E402


def test_real_folder_padded_to_size_passes_validation(sample_dir, tmp_path):
    original = pd.read_csv(sample_dir / "train.csv")
    target = len(original) + 7
    info = build_from_real(sample_dir, tmp_path, questions=target, test_questions=5)

    data = load_kaggle_dir(tmp_path)  # the folder prepare would read: ids unique, labels known, rows complete
    assert len(data.train) == target and data.train["QuestionId"].is_unique
    assert info["repeated_questions"] == 7 and info["test_questions"] == 5
    # the padding repeats real questions: same texts, new ids
    added = data.train.tail(7)
    assert set(added["QuestionText"]) <= set(original["QuestionText"])
    assert not set(added["QuestionId"]) & set(original["QuestionId"])
    # the test questions carry no labels and three wrong answers each to predict
    test = pd.read_csv(tmp_path / "test.csv")
    assert not any(c.startswith("Misconception") for c in test.columns)
    assert not set(test["QuestionId"]) & set(data.train["QuestionId"])
    assert len(pd.read_csv(tmp_path / "sample_submission.csv")) == 3 * 5
