"""prepare: validation of every kind of bad input, the pivot, the folds."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from eedi.config import load_config
from eedi.data.folds import assign_folds, fold_report
from eedi.data.kaggle import load_kaggle_dir
from eedi.data.pairs import build_pairs
from eedi.errors import DataError
from eedi.pipeline.runner import run_stage


def edit_csv(path: Path, row: int, column: str, value) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


def test_pivot_one_row_per_wrong_answer(tiny_kaggle):
    data = load_kaggle_dir(tiny_kaggle)
    pairs = build_pairs(data, load_config().data)
    train = pairs[pairs["split"] == "train"]
    assert len(train) == 4 * 3 and len(pairs[pairs["split"] == "test"]) == 4 * 3
    row = train.set_index("QuestionId_Answer").loc["2_B"]
    assert row["WrongAnswerText"] == "wrong b 2" and row["CorrectAnswerText"] == "right 2"
    assert row["MisconceptionId"] == 2
    assert pd.isna(train.set_index("QuestionId_Answer").loc["0_D", "MisconceptionId"])  # untagged kept
    assert "Incorrect answer: wrong b 2" in row["QueryText"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "train.csv").write_text(""), r"train.csv: file is empty"),
        (lambda d: (d / "train.csv").unlink(), r"train.csv: file not found"),
        (
            lambda d: pd.read_csv(d / "train.csv").drop(columns=["QuestionText"]).to_csv(d / "train.csv", index=False),
            r"train.csv, column 'QuestionText': missing required column",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 2, "QuestionId", "0"),
            r"train.csv, row 3 \(line 4\), column 'QuestionId': duplicate QuestionId 0",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 1, "CorrectAnswer", "E"),
            r"row 2 \(line 3\), column 'CorrectAnswer': CorrectAnswer must be one of A-D",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 0, "QuestionText", "  "),
            r"row 1 \(line 2\), column 'QuestionText': empty question text",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 3, "AnswerCText", ""),
            r"row 4 \(line 5\), column 'AnswerCText': empty answer text",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 1, "MisconceptionBId", "99"),
            r"row 2 \(line 3\), column 'MisconceptionBId': MisconceptionId 99 is not in misconception_mapping.csv",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 1, "MisconceptionBId", "abc"),
            r"row 2 \(line 3\), column 'MisconceptionBId': not an integer",
        ),
        (
            lambda d: edit_csv(d / "train.csv", 1, "MisconceptionAId", "3"),
            r"row 2 \(line 3\), column 'MisconceptionAId': the correct answer A has a misconception",
        ),
        (
            lambda d: (d / "train.csv").write_bytes(
                (d / "train.csv").read_bytes() + b"5,1,x,1,y,A,\xff\xfe,a,b,c,d,,,,\n"
            ),
            r"train.csv, row 5 \(line 6\): not valid UTF-8",
        ),
        (
            lambda d: edit_csv(d / "misconception_mapping.csv", 3, "MisconceptionId", "1"),
            r"misconception_mapping.csv, row 4 \(line 5\), column 'MisconceptionId': duplicate",
        ),
        (
            lambda d: edit_csv(d / "test.csv", 0, "CorrectAnswer", "a"),
            r"test.csv, row 1 \(line 2\), column 'CorrectAnswer'",
        ),
        (
            lambda d: (d / "train.csv").write_text(",".join(pd.read_csv(d / "train.csv").columns) + "\n"),
            r"train.csv: file has a header but no rows",
        ),
    ],
)
def test_bad_input_names_file_row_column(tiny_kaggle, mutate, message):
    mutate(tiny_kaggle)
    with pytest.raises(DataError, match=message):
        load_kaggle_dir(tiny_kaggle)


def test_cli_bad_input_exits_nonzero_and_writes_nothing(tiny_kaggle, tmp_path):
    edit_csv(tiny_kaggle / "train.csv", 1, "CorrectAnswer", "Z")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "eedi", "prepare", f"data.dir={tiny_kaggle}", f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "train.csv, row 2 (line 3), column 'CorrectAnswer'" in result.stderr
    assert result.stderr.count("error:") == 1
    written = {p.name for p in run_dir.rglob("*") if p.is_file()} if run_dir.exists() else set()
    assert not written & {"pairs.parquet", "folds.csv", "misconceptions.parquet"}
    assert not [p for p in run_dir.rglob("*.tmp")] if run_dir.exists() else True


def test_prepare_writes_outputs_and_manifest(prepared_sample):
    import json

    pairs = pd.read_parquet(prepared_sample / "pairs.parquet")
    folds = pd.read_csv(prepared_sample / "folds.csv")
    manifest = json.loads((prepared_sample / "manifest.json").read_text())
    assert manifest["stages"]["prepare"]["status"] == "done"
    assert manifest["stages"]["prepare"]["summary"]["folds_sha256"]
    assert set(manifest["inputs"]) >= {"train.csv", "misconception_mapping.csv"}
    assert list(folds.columns) == ["QuestionId", "fold"]
    assert folds["QuestionId"].is_unique
    assert set(pairs.loc[pairs.split == "train", "QuestionId"]) == set(folds["QuestionId"])
    assert pairs["QuestionId_Answer"].is_unique


def _folds(pairs, **overrides):
    cfg = load_config(None, [f"folds.{k}={v}" for k, v in overrides.items()])
    return assign_folds(pairs, cfg.folds)


@pytest.fixture(scope="module")
def sample_pairs(sample_dir):
    return build_pairs(load_kaggle_dir(sample_dir), load_config().data)


def test_folds_reproducible_and_disjoint(sample_pairs):
    a, b = _folds(sample_pairs, seed=1), _folds(sample_pairs, seed=1)
    c = _folds(sample_pairs, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold"].equals(c["fold"])
    assert a["QuestionId"].is_unique  # no question in two folds
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]
    sizes = a["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 2


def test_unseen_mode_raises_unseen_share(sample_pairs):
    group = fold_report(sample_pairs, _folds(sample_pairs, mode="group"))
    unseen = fold_report(sample_pairs, _folds(sample_pairs, mode="unseen", unseen_share=0.3))
    mean = lambda r: sum(f["unseen_share"] for f in r.values()) / len(r)
    assert mean(unseen) > mean(group) + 0.1


def test_prepare_rerun_is_skipped(tiny_kaggle, tmp_path, caplog):
    cfg = load_config(None, [f"data.dir={tiny_kaggle}", f"run_dir={tmp_path / 'run'}", "folds.n_splits=2"])
    run_stage(cfg, "prepare")
    mtime = (tmp_path / "run" / "pairs.parquet").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        run_stage(cfg, "prepare")
    assert "up to date" in caplog.text
    assert (tmp_path / "run" / "pairs.parquet").stat().st_mtime_ns == mtime
    edit_csv(tiny_kaggle / "train.csv", 0, "QuestionText", "changed")  # input changed -> re-run
    run_stage(cfg, "prepare")
    assert (tmp_path / "run" / "pairs.parquet").stat().st_mtime_ns != mtime
