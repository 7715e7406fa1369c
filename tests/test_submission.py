import pandas as pd
import pytest

from eedi.data.submission import build_submission, validate_submission, write_submission
from eedi.errors import DataError


def _test_pairs(keys):
    return pd.DataFrame({"QuestionId_Answer": keys})


def test_submission_dedups_and_cuts_to_25(tmp_path):
    ranked = {"1_B": [3, 3] + list(range(10, 40)), "1_C": list(range(50, 80))}
    sub = build_submission(ranked, _test_pairs(["1_B", "1_C"]))
    assert sub["MisconceptionId"][0].split() == ["3"] + [str(i) for i in range(10, 34)]
    assert len(sub["MisconceptionId"][1].split()) == 25
    path = write_submission(
        tmp_path / "submission.csv",
        ranked,
        _test_pairs(["1_B", "1_C"]),
        sample=pd.DataFrame({"QuestionId_Answer": ["1_B", "1_C"], "MisconceptionId": ["1 2 3"] * 2}),
    )
    assert path.read_text().splitlines()[0] == "QuestionId_Answer,MisconceptionId"


def test_submission_errors():
    with pytest.raises(ValueError, match="no ranking for 1"):
        build_submission({"1_B": list(range(30))}, _test_pairs(["1_B", "1_C"]))
    with pytest.raises(ValueError, match="only 3 distinct"):
        build_submission({"1_B": [1, 2, 3]}, _test_pairs(["1_B"]))
    sub = build_submission({"1_B": list(range(30))}, _test_pairs(["1_B"]))
    with pytest.raises(DataError, match="1 missing"):
        validate_submission(sub, pd.DataFrame({"QuestionId_Answer": ["1_B", "2_B"]}), None)
    with pytest.raises(DataError, match="invalid misconception id '20'"):
        validate_submission(sub, None, n_misconceptions=20)
