"""make-holdout / score: the local leaderboard on data/sample."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_tiny_kaggle

from eedi.cli import main
from eedi.config import load_config
from eedi.data.kaggle import load_kaggle_dir, load_mapping
from eedi.data.pairs import build_pairs
from eedi.data.schema import QUESTION_COLUMNS
from eedi.data.submission import validate_submission
from eedi.errors import DataError
from eedi.evaluation.holdout import make_holdout, score_submission

OUT_FILES = {
    "train.csv",
    "test.csv",
    "sample_submission.csv",
    "misconception_mapping.csv",
    "labels.csv",
    "holdout.json",
}
# data/sample labels 268 of its 319 misconceptions, densely: a 25% holdout has no unseen label at all,
# this split has 35 unseen test labels, so the seen/unseen accounting is exercised.
SHARE, SEED = 0.5, 0


def read_raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def holdout(tmp_path_factory, sample_dir) -> Path:
    out = tmp_path_factory.mktemp("holdout") / "out"
    make_holdout(sample_dir, out, test_share=SHARE, seed=SEED)
    return out


@pytest.fixture(scope="module")
def mapping_ids(sample_dir) -> list[int]:
    return load_mapping(sample_dir / "misconception_mapping.csv")["MisconceptionId"].tolist()


def ranked_with(label: int, position: int | None, ids: list[int]) -> list[int]:
    """25 distinct known ids with ``label`` at 1-based ``position`` (None: absent)."""
    others = [i for i in ids if i != label][:25]
    if position is None:
        return others
    return others[: position - 1] + [label] + others[position - 1 : 24]


def write_submission(path: Path, rows: dict[str, list[int]]) -> Path:
    pd.DataFrame(
        {"QuestionId_Answer": list(rows), "MisconceptionId": [" ".join(map(str, v)) for v in rows.values()]}
    ).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- make-holdout


def test_split_by_question_sizes_and_files(holdout, sample_dir):
    source, train, test = (
        read_raw(sample_dir / "train.csv"),
        read_raw(holdout / "train.csv"),
        read_raw(holdout / "test.csv"),
    )
    assert {p.name for p in holdout.iterdir()} == OUT_FILES
    assert len(test) == round(SHARE * len(source)) and len(train) + len(test) == len(source)
    assert set(train["QuestionId"]).isdisjoint(test["QuestionId"])
    assert set(train["QuestionId"]) | set(test["QuestionId"]) == set(source["QuestionId"])
    # train rows unchanged (same columns, same text, original order); test has the Kaggle test columns only
    assert list(train.columns) == list(source.columns)
    pd.testing.assert_frame_equal(train, source[source["QuestionId"].isin(train["QuestionId"])].reset_index(drop=True))
    assert list(test.columns) == QUESTION_COLUMNS
    pd.testing.assert_frame_equal(
        test, source.loc[source["QuestionId"].isin(test["QuestionId"]), QUESTION_COLUMNS].reset_index(drop=True)
    )
    # data/sample's train.csv round-trips byte for byte: the kept rows are the original lines
    assert set((holdout / "train.csv").read_text().splitlines()) <= set(
        (sample_dir / "train.csv").read_text().splitlines()
    )
    assert (holdout / "misconception_mapping.csv").read_bytes() == (
        sample_dir / "misconception_mapping.csv"
    ).read_bytes()


def test_output_is_a_kaggle_folder_prepare_and_infer_accept(holdout):
    data = load_kaggle_dir(holdout)
    assert data.test is not None and data.sample_submission is not None
    pairs = build_pairs(data, load_config().data)
    test_keys = pairs.loc[pairs["split"] == "test", "QuestionId_Answer"]
    # sample_submission lists every wrong answer of test.csv, as the infer stage's key check requires
    assert list(data.sample_submission["QuestionId_Answer"]) == list(test_keys)
    assert set(data.sample_submission["MisconceptionId"]) == {"1 2 3"}
    validate_submission(
        pd.DataFrame({"QuestionId_Answer": test_keys, "MisconceptionId": " ".join(map(str, range(25)))}),
        data.sample_submission,
        None,
    )
    assert (pairs["split"] == "test").sum() == 3 * len(data.test)


def test_labels_match_the_original_rows(holdout, sample_dir):
    source = read_raw(sample_dir / "train.csv").set_index("QuestionId")
    labels = read_raw(holdout / "labels.csv")
    test_ids = set(read_raw(holdout / "test.csv")["QuestionId"])
    assert list(labels.columns) == ["QuestionId_Answer", "MisconceptionId"]
    assert labels["QuestionId_Answer"].is_unique
    for key, mid in zip(labels["QuestionId_Answer"], labels["MisconceptionId"]):
        qid, letter = key.split("_")
        assert qid in test_ids and letter != source.loc[qid, "CorrectAnswer"]
        assert mid.isdigit() and float(source.loc[qid, f"Misconception{letter}Id"]) == int(mid)
    expected = sum(source.loc[q, f"Misconception{x}Id"] != "" for q in test_ids for x in "ABCD")
    assert len(labels) == expected
    assert set(labels["QuestionId_Answer"]) <= set(read_raw(holdout / "sample_submission.csv")["QuestionId_Answer"])


def test_holdout_json_counts(holdout, sample_dir):
    info = json.loads((holdout / "holdout.json").read_text())
    train, labels = read_raw(holdout / "train.csv"), read_raw(holdout / "labels.csv")
    assert info["seed"] == SEED and info["test_share"] == SHARE
    assert info["questions"] == {
        "source": len(read_raw(sample_dir / "train.csv")),
        "train": len(train),
        "test": len(read_raw(holdout / "test.csv")),
    }
    assert info["pairs"]["test_labelled"] == len(labels)
    assert info["pairs"]["test"] == len(read_raw(holdout / "sample_submission.csv"))
    seen = {
        int(float(v))
        for c in ("MisconceptionAId", "MisconceptionBId", "MisconceptionCId", "MisconceptionDId")
        for v in train[c]
        if v
    }
    unseen = sum(int(m) not in seen for m in labels["MisconceptionId"])
    assert info["test_labels_unseen"] == unseen > 0


def test_same_seed_same_split_other_seed_other_split(holdout, sample_dir, tmp_path):
    make_holdout(sample_dir, tmp_path / "again", test_share=SHARE, seed=SEED)
    make_holdout(sample_dir, tmp_path / "other", test_share=SHARE, seed=7)
    for name in OUT_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (holdout / name).read_bytes(), name
    assert set(read_raw(tmp_path / "other" / "test.csv")["QuestionId"]) != set(
        read_raw(holdout / "test.csv")["QuestionId"]
    )
    default = make_holdout(sample_dir, tmp_path / "default")  # test_share 0.25, seed 42
    assert (default["seed"], default["test_share"]) == (42, 0.25)
    assert len(read_raw(tmp_path / "default" / "test.csv")) == round(0.25 * len(read_raw(sample_dir / "train.csv")))


def test_out_folder_refusals_and_force(sample_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    make_holdout(sample_dir, out, seed=1)  # an empty folder is fine
    with pytest.raises(DataError, match="not empty.*--force"):
        make_holdout(sample_dir, out, seed=2)
    make_holdout(sample_dir, out, seed=2, force=True)
    assert json.loads((out / "holdout.json").read_text())["seed"] == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by make-holdout"):
        make_holdout(sample_dir, other, force=True)
    assert (other / "keep.txt").read_text() == "mine"
    data = shutil.copytree(sample_dir, tmp_path / "data")
    with pytest.raises(DataError, match="must not be the input folder"):
        make_holdout(data, data, force=True)


def test_bad_input_is_a_data_error_and_writes_nothing(tmp_path):
    data = write_tiny_kaggle(tmp_path / "kaggle")
    df = read_raw(data / "train.csv")
    df.loc[2, "MisconceptionBId"] = "x"
    df.to_csv(data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv, row 3 \(line 4\), column 'MisconceptionBId': not an integer"):
        make_holdout(data, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [data]


# --------------------------------------------------------------------------- score


def test_perfect_and_second_place_submissions(holdout, mapping_ids):
    labels = read_raw(holdout / "labels.csv")
    keys = read_raw(holdout / "sample_submission.csv")["QuestionId_Answer"].tolist()
    truth = dict(zip(labels["QuestionId_Answer"], labels["MisconceptionId"].astype(int)))
    for position, expected in ((1, 1.0), (2, 0.5)):
        rows = {key: ranked_with(truth.get(key, 0), position, mapping_ids) for key in keys}
        result = score_submission(write_submission(holdout.parent / f"sub{position}.csv", rows), holdout / "labels.csv")
        assert result["map@25"] == pytest.approx(expected)
        assert result["recall@1"] == (1.0 if position == 1 else 0.0)
        assert result["recall@5"] == result["recall@25"] == 1.0
        assert result["rows_scored"] == result["n"] == len(labels)
        assert result["rows_ignored"] == len(keys) - len(labels) > 0
        # train.csv beside labels.csv: the seen/unseen split comes for free
        info = json.loads((holdout / "holdout.json").read_text())
        assert result["n_unseen"] == info["test_labels_unseen"]
        assert result["n_seen"] + result["n_unseen"] == len(labels)
        assert result["map@25_seen"] == result["map@25_unseen"] == pytest.approx(expected)


@pytest.fixture
def tiny_labels(tmp_path, sample_dir, mapping_ids):
    """Four labels, two of them of misconceptions seen in data/sample's train.csv and two unseen."""
    train = read_raw(sample_dir / "train.csv")
    seen = {
        int(float(v))
        for c in ("MisconceptionAId", "MisconceptionBId", "MisconceptionCId", "MisconceptionDId")
        for v in train[c]
        if v
    }
    seen_ids = sorted(seen)[:2]
    unseen_ids = [i for i in mapping_ids if i not in seen][:2]
    assert len(unseen_ids) == 2
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copyfile(sample_dir / "misconception_mapping.csv", folder / "misconception_mapping.csv")
    labels = {"1_A": seen_ids[0], "1_B": unseen_ids[0], "2_C": seen_ids[1], "3_D": unseen_ids[1]}
    write_submission(folder / "labels.csv", {k: [v] for k, v in labels.items()})
    return folder, labels


def test_hand_computed_mixed_case_with_seen_unseen(tiny_labels, mapping_ids, sample_dir):
    folder, labels = tiny_labels
    positions = {"1_A": 1, "1_B": 3, "2_C": None, "3_D": 25}  # AP: 1, 1/3, 0, 1/25
    rows = {key: ranked_with(labels[key], positions[key], mapping_ids) for key in labels}
    rows["9_B"] = ranked_with(0, 1, mapping_ids)  # not labelled: ignored, counted
    sub = write_submission(folder / "submission.csv", rows)
    result = score_submission(sub, folder / "labels.csv")
    assert result["map@25"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 25) / 4)
    assert (result["recall@1"], result["recall@5"], result["recall@25"]) == (0.25, 0.5, 0.75)
    assert (result["rows_scored"], result["rows_ignored"]) == (4, 1)
    assert "n_seen" not in result and result["train"] is None  # no train.csv beside the labels
    result = score_submission(sub, folder / "labels.csv", train=sample_dir / "train.csv")
    # seen: 1_A (AP 1), 2_C (AP 0); unseen: 1_B (1/3), 3_D (1/25)
    assert (result["n_seen"], result["n_unseen"]) == (2, 2)
    assert result["map@25_seen"] == pytest.approx(0.5)
    assert result["map@25_unseen"] == pytest.approx((1 / 3 + 1 / 25) / 2)
    assert (result["recall@25_seen"], result["recall@25_unseen"]) == (0.5, 1.0)
    # the competition's mix: 0.25 x seen + 0.75 x unseen, by hand
    assert result["map@25_mix"] == pytest.approx(0.25 * 0.5 + 0.75 * (1 / 3 + 1 / 25) / 2)
    even = score_submission(sub, folder / "labels.csv", train=sample_dir / "train.csv", unseen_share=0.5)
    assert even["map@25_mix"] == pytest.approx(0.5 * 0.5 + 0.5 * (1 / 3 + 1 / 25) / 2)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda df: df.drop(index=2),
            r"submission.csv, column 'QuestionId_Answer': 1 labelled row\(s\) missing: 2_C "
            r"\(first is row 3 of .*labels.csv\)",
        ),
        (
            lambda df: df.assign(MisconceptionId=df["MisconceptionId"].where(df.index != 1, "1 2 3")),
            r"submission.csv, row 2 \(line 3\), column 'MisconceptionId': 1_B: need exactly 25 ids, got 3",
        ),
        (
            lambda df: df.assign(
                MisconceptionId=df["MisconceptionId"].where(df.index != 1, df["MisconceptionId"].str.rsplit(n=1).str[0])
            ),
            r"row 2 \(line 3\), column 'MisconceptionId': 1_B: need exactly 25 ids, got 24",
        ),
        (
            lambda df: df.assign(
                MisconceptionId=df["MisconceptionId"].where(
                    df.index != 3,
                    df["MisconceptionId"].str.split().str[0]
                    + " "
                    + df["MisconceptionId"].str.split(n=1).str[0]
                    + " "
                    + df["MisconceptionId"].str.split().str[1:24].str.join(" "),
                )
            ),
            r"row 4 \(line 5\), column 'MisconceptionId': 3_D: duplicate id\(s\) \[\d+\]",
        ),
        (
            lambda df: df.assign(
                MisconceptionId=df["MisconceptionId"].where(
                    df.index != 0, "99999 " + df["MisconceptionId"].str.split(n=1).str[1]
                )
            ),
            r"row 1 \(line 2\), column 'MisconceptionId': 1_A: invalid misconception id '99999' \(not in misconception_mapping",
        ),
        (
            lambda df: df.assign(
                MisconceptionId=df["MisconceptionId"].where(
                    df.index != 2, "1.5 " + df["MisconceptionId"].str.split(n=1).str[1]
                )
            ),
            r"row 3 \(line 4\), column 'MisconceptionId': 2_C: invalid misconception id '1.5' \(not a non-negative integer",
        ),
        (
            lambda df: pd.concat([df, df.iloc[[1]]], ignore_index=True),
            r"row 5 \(line 6\), column 'QuestionId_Answer': duplicate QuestionId_Answer '1_B' \(first at row 2\)",
        ),
        (
            lambda df: df.rename(columns={"MisconceptionId": "Prediction"}),
            r"submission.csv, column 'MisconceptionId': missing required column",
        ),
        (
            lambda df: df.assign(Extra="1"),
            r"submission.csv: columns must be \['QuestionId_Answer', 'MisconceptionId'\]",
        ),
    ],
)
def test_bad_submission_is_one_clear_error(tiny_labels, mapping_ids, mutate, message, capsys):
    folder, labels = tiny_labels
    rows = {key: ranked_with(mid, 1, mapping_ids) for key, mid in labels.items()}
    sub = folder / "submission.csv"
    write_submission(sub, rows)
    mutate(read_raw(sub)).to_csv(sub, index=False)
    with pytest.raises(DataError, match=message):
        score_submission(sub, folder / "labels.csv")
    assert main(["score", str(sub), "--labels", str(folder / "labels.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err


def test_without_a_mapping_ids_need_only_be_integers(tiny_labels, mapping_ids, tmp_path):
    folder, labels = tiny_labels
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(folder / "labels.csv", alone / "labels.csv")
    rows = {key: [99999] + ranked_with(mid, 1, mapping_ids)[:24] for key, mid in labels.items()}
    sub = write_submission(tmp_path / "submission.csv", rows)
    assert score_submission(sub, alone / "labels.csv")["map@25"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="invalid misconception id '99999' \\(not in misconception_mapping"):
        score_submission(sub, alone / "labels.csv", mapping=folder / "misconception_mapping.csv")


def test_cli_make_holdout_then_score(sample_dir, tmp_path, capsys, mapping_ids):
    out = tmp_path / "holdout"
    split = ["--test-share", str(SHARE), "--seed", str(SEED)]  # a split with unseen labels: the mix is defined
    assert main(["make-holdout", "--data", str(sample_dir), "--out", str(out), *split]) == 0
    printed = capsys.readouterr().out
    assert "test questions" in printed and "never give it to the model" in printed
    assert main(["make-holdout", "--data", str(sample_dir), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    labels = read_raw(out / "labels.csv")
    rows = {
        key: ranked_with(int(mid), 1, mapping_ids)
        for key, mid in zip(labels["QuestionId_Answer"], labels["MisconceptionId"])
    }
    sub = write_submission(tmp_path / "submission.csv", rows)
    assert main(["score", str(sub), "--labels", str(out / "labels.csv"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map@25"] == 1.0 and result["rows_ignored"] == 0 and "n_unseen" in result
    assert result["map@25_mix"] == 1.0 and result["unseen_share"] == 0.75
    assert main(["score", str(sub), "--labels", str(out / "labels.csv")]) == 0
    table = capsys.readouterr().out
    assert "MAP@25" in table and "recall@5" in table and "unseen" in table
    assert re.search(r"^mix +1\.0000 += 0\.25 x seen \+ 0\.75 x unseen", table, re.M)
    assert main(["score", str(sub), "--labels", str(out / "labels.csv"), "--unseen-share", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unseen_share"] == 0.5
    with pytest.raises(SystemExit) as exc:
        main(["score", str(sub), "--labels", str(out / "labels.csv"), "--unseen-share", "2"])
    assert exc.value.code == 2 and "between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["make-holdout", "--data", str(sample_dir), "--out", str(tmp_path / "x"), "--test-share", "1.5"])
    assert exc.value.code == 2 and "between 0 and 1" in capsys.readouterr().err
