"""The procedural sample data: Kaggle schema, reproducibility, and that distractors really are
what their misconceptions compute."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace as ns

import pandas as pd
import pytest

from eedi.cli import main as eedi_main
from eedi.sample import build, families, text, write

REPO = Path(__file__).resolve().parents[1]
LETTERS = "ABCD"
MISC_COLUMNS = [f"Misconception{x}Id" for x in LETTERS]
TRAIN_COLUMNS = [
    "QuestionId",
    "ConstructId",
    "ConstructName",
    "SubjectId",
    "SubjectName",
    "CorrectAnswer",
    "QuestionText",
    "AnswerAText",
    "AnswerBText",
    "AnswerCText",
    "AnswerDText",
    *MISC_COLUMNS,
]
TEST_COLUMNS = TRAIN_COLUMNS[:11]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    return write.generate_sample(tmp_path_factory.mktemp("seed0"), seed=0)


@pytest.fixture(scope="module")
def sample() -> build.Sample:
    return build.build_sample(0)


@pytest.fixture(scope="module")
def train(written) -> pd.DataFrame:
    return pd.read_csv(written["train"])


@pytest.fixture(scope="module")
def test_df(written) -> pd.DataFrame:
    return pd.read_csv(written["test"])


@pytest.fixture(scope="module")
def mapping(written) -> pd.DataFrame:
    return pd.read_csv(written["misconception_mapping"])


def misconception_ids(df: pd.DataFrame) -> Counter:
    return Counter(int(v) for column in MISC_COLUMNS for v in df[column].dropna())


# --------------------------------------------------------------------------- schema


def test_writes_the_four_kaggle_files_with_exact_columns(written, train, test_df, mapping):
    assert {p.name for p in written.values()} == {
        "train.csv",
        "test.csv",
        "misconception_mapping.csv",
        "sample_submission.csv",
    }
    assert sorted(p.name for p in next(iter(written.values())).parent.iterdir()) == sorted(
        p.name for p in written.values()
    ), "no temp files left behind"
    assert list(train.columns) == TRAIN_COLUMNS
    assert list(test_df.columns) == TEST_COLUMNS
    assert list(mapping.columns) == ["MisconceptionId", "MisconceptionName"]
    assert list(pd.read_csv(written["sample_submission"]).columns) == ["QuestionId_Answer", "MisconceptionId"]


def test_ids_and_letters_follow_kaggle_conventions(written, train, test_df, mapping):
    assert train["QuestionId"].tolist() == list(range(len(train)))
    assert test_df["QuestionId"].tolist() == list(range(len(train), len(train) + len(test_df)))
    assert mapping["MisconceptionId"].tolist() == list(range(len(mapping)))
    assert mapping["MisconceptionName"].is_unique
    assert set(train["CorrectAnswer"]) == set(LETTERS), "the correct letter is spread over A-D"
    for df in (train, test_df):  # one id per construct and per subject
        assert (df.groupby("ConstructName")["ConstructId"].nunique() == 1).all()
        assert (df.groupby("SubjectName")["SubjectId"].nunique() == 1).all()
        assert (df.groupby("ConstructId")["ConstructName"].nunique() == 1).all()
    # Misconception ids are written as floats ("12.0") or left empty, like the real file.
    raw = pd.read_csv(written["train"], dtype=str, keep_default_na=False)
    cells = [v for column in MISC_COLUMNS for v in raw[column]]
    assert all(v == "" or (v.endswith(".0") and v[:-2].isdigit()) for v in cells)
    # LaTeX-style maths like the real data.
    assert raw["QuestionText"].str.contains("\\frac{", regex=False).any()
    assert raw["AnswerAText"].str.startswith("\\( ").mean() > 0.9


def test_counts(train, test_df, mapping, sample):
    labelled = misconception_ids(train) + misconception_ids(sample.test_labels)
    n_rule = len(families.RULES)
    assert n_rule >= 150
    assert len(labelled) == n_rule, "every rule-misconception is used in train or test"
    assert train["SubjectName"].nunique() >= 8
    assert len(train) >= 400
    assert 50 <= len(test_df) <= 70
    assert len(mapping) == n_rule + len(families.UNUSED_MISCONCEPTIONS)


def test_each_seen_misconception_appears_several_times_in_train(train):
    counts = misconception_ids(train)
    assert min(counts.values()) >= 6
    assert max(counts.values()) <= 12


def test_about_eight_percent_of_train_distractors_are_unlabelled_slips(train):
    wrong = 3 * len(train)
    unlabelled = int(train[MISC_COLUMNS].isna().sum().sum()) - len(train)  # minus the correct answers
    assert 0.05 <= unlabelled / wrong <= 0.12


def test_options_are_distinct_and_the_correct_answer_is_unlabelled(train, sample):
    for df in (train, sample.test_labels):
        for row in df.itertuples(index=False):
            texts = [getattr(row, f"Answer{x}Text") for x in LETTERS]
            assert len(set(texts)) == 4, texts
            assert pd.isna(getattr(row, f"Misconception{row.CorrectAnswer}Id"))


def test_some_misconceptions_only_in_test(train, sample, mapping):
    in_train = misconception_ids(train)
    in_test = misconception_ids(sample.test_labels)
    only_test = set(in_test) - set(in_train)
    name_to_id = dict(zip(mapping["MisconceptionName"], mapping["MisconceptionId"]))
    assert only_test == {name_to_id[m] for m in sample.test_only}
    assert 10 <= len(only_test) <= 20
    assert all(in_test[m] >= 2 for m in only_test)
    assert len(set(in_test) & set(in_train)) >= 30, "test also reuses seen misconceptions"


def test_some_mapping_ids_are_never_used(train, sample, mapping):
    used = set(misconception_ids(train)) | set(misconception_ids(sample.test_labels))
    unused = set(mapping["MisconceptionId"]) - used
    assert len(unused) >= 30
    names = set(mapping.loc[mapping["MisconceptionId"].isin(unused), "MisconceptionName"])
    assert names == set(families.UNUSED_MISCONCEPTIONS)
    # Ids are shuffled: the rule-misconceptions are not simply the first ids.
    assert max(used) > len(used)


def test_sample_submission_rows_are_the_wrong_answers_of_test(written, test_df):
    sub = pd.read_csv(written["sample_submission"], dtype=str)
    keys = zip(test_df["QuestionId"], test_df["CorrectAnswer"])
    expected = [f"{q}_{x}" for q, c in keys for x in LETTERS if x != c]
    assert sub["QuestionId_Answer"].tolist() == expected
    assert (sub["MisconceptionId"] == "1 2 3").all()


def test_data_stage_accepts_the_sample(written):
    from eedi.data.kaggle import load_kaggle_dir

    data = load_kaggle_dir(written["train"].parent)
    assert len(data.train) >= 400 and len(data.test) > 0


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_bytes_and_another_seed_differs(written, tmp_path):
    again = write.generate_sample(tmp_path / "again", seed=0)
    for name, path in written.items():
        assert again[name].read_bytes() == path.read_bytes(), name
    other = write.generate_sample(tmp_path / "other", seed=1)
    assert other["train"].read_bytes() != written["train"].read_bytes()
    assert other["test"].read_bytes() != written["test"].read_bytes()


def test_committed_sample_equals_the_generator(written):
    committed = REPO / "data" / "sample"
    for path in written.values():
        assert (committed / path.name).read_bytes() == path.read_bytes(), (
            f"data/sample/{path.name} drifted from the generator: run `eedi make-sample --out data/sample`"
        )


def test_cli_writes_the_files(tmp_path, capsys):
    assert eedi_main(["make-sample", "--out", str(tmp_path / "cli"), "--seed", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == sorted(build.FILES.values())
    assert "train.csv" in capsys.readouterr().out


# --------------------------------------------------------------------------- the rules


def test_catalogue_is_consistent():
    names = [rule.misconception for fam in families.FAMILIES for rule in fam.rules]
    assert len(names) == len(set(names)) == len(families.RULES), "misconception texts are unique"
    assert not set(names) & set(families.UNUSED_MISCONCEPTIONS)
    constructs = [fam.construct for fam in families.FAMILIES]
    assert len(constructs) == len(set(constructs))
    assert all(len(fam.rules) >= 3 for fam in families.FAMILIES)


def test_every_distractor_is_its_rules_output():
    """Build a question around every rule and recompute each option from the drawn numbers."""
    r = random.Random(123)
    for fam in families.FAMILIES:
        for must in fam.rules:
            q = build.make_question(fam, list(fam.rules), must, Counter(), r, set(), slip_rate=0.5)
            assert q.answers[q.correct].text == fam.kind.show(fam.correct(q.numbers))
            labels = [o.misconception for letter, o in q.answers.items() if letter != q.correct]
            assert must.misconception in labels
            for option in q.answers.values():
                if option.misconception:
                    assert option.text == fam.kind.show(families.RULES[option.misconception].apply(q.numbers))


HAND_CHECKED = [
    # (misconception, numbers, expected raw value)
    ("Adds the numerators and adds the denominators when adding fractions", ns(a=1, b=2, c=1, d=3), (2, 5)),
    ("Adds the numerators and adds the denominators when adding fractions", ns(a=3, b=4, c=1, d=8), (4, 12)),
    ("Multiplies the fractions when the question asks to divide them", ns(a=2, b=3, c=4, d=5), (8, 15)),
    ("Thinks the angles in a triangle add up to 360 degrees", ns(x=50, y=60), 250),
    ("Thinks angles around a point add up to 180 degrees", ns(x=40, y=50, z=60), 30),
    ("Subtracts the smaller digit from the larger in each column", ns(a=352, b=128, ta=[3, 5, 2], tb=[1, 2, 8]), 236),
    (
        "Exchanges ten from the next column but forgets to reduce that column",
        ns(a=352, b=128, ta=[3, 5, 2], tb=[1, 2, 8]),
        234,
    ),
    (
        "Writes the whole column total in the answer instead of carrying",
        ns(a=158, b=267, ta=[1, 5, 8], tb=[2, 6, 7]),
        31115,
    ),
    (
        "Carries the units digit and writes the tens digit of a column total",
        ns(a=158, b=267, ta=[1, 5, 8], tb=[2, 6, 7]),
        911,
    ),
    ("Carries out operations from left to right regardless of priority order", ns(a=50, b=3, c=4, d=2), 190),
    ("Thinks multiplying two negative numbers gives a negative answer", ns(a=4, b=6), -24),
    ("Thinks subtracting a negative number is the same as subtracting a positive number", ns(a=-3, b=5), -8),
    (
        "Moves the decimal point the wrong way when multiplying by a power of ten",
        ns(x=Fraction("3.45"), k=2),
        Fraction("0.0345"),
    ),
    ("Writes zeros on the end of a decimal to multiply it by a power of ten", ns(x=Fraction("3.45"), k=2), "3.4500"),
    ("Rounds to two decimal places instead of one", ns(x=Fraction("3.476")), Fraction("3.48")),
    ("Truncates instead of rounding", ns(x=Fraction("3.476")), Fraction("3.4")),
    ("Subtracts each decimal digit from 10 when subtracting from 1", ns(p=Fraction("0.35")), Fraction("0.75")),
    ("Subtracts times as if there were 100 minutes in an hour", ns(h1=10, m1=45, h2=13, m2=20), (2, 75)),
    ("Thinks there are 100 minutes in an hour", ns(w=3, f=Fraction(1, 4)), 325),
    ("Multiplies the powers when multiplying numbers with the same base", ns(a=3, m=4, n=5), (3, 20)),
    (
        "Only multiplies the first terms and the last terms when expanding double brackets",
        ns(a=3, b=-2),
        ((1, "x^{2}"), (-6, "")),
    ),
    ("Finds the median instead of the mean", ns(v=[1, 2, 9, 4, 4], n=5), 4),
    ("Divides the amount by the percentage", ns(x=20, y=100), 5),
    ("Uses the diameter instead of the radius in the area formula", ns(r=3), (36, 1)),
]


@pytest.mark.parametrize(("name", "numbers", "expected"), HAND_CHECKED, ids=[h[0][:40] for h in HAND_CHECKED])
def test_hand_checked_rules(name, numbers, expected):
    assert families.RULES[name].apply(numbers) == expected


def test_rendering_helpers():
    assert text.dec(Fraction(7, 100)) == "0.07"
    assert text.dec(Fraction(-345, 10)) == "-34.5"
    assert text.dec(12) == "12"
    with pytest.raises(ValueError):
        text.dec(Fraction(1, 3))
    assert text.frac(-3, 4) == "-\\frac{3}{4}"
    assert text.expr(((1, "x^{2}"), (-1, "x"), (0, ""))) == "x^{2}-x"
    assert text.expr(text.lin(3, -2)) == "3 x-2"
    assert text.latex(text.frac(4, 12)) == "\\( \\frac{4}{12} \\)"
    duration = families.FAMILY_OF["Subtracts times as if there were 100 minutes in an hour"].kind
    assert duration.show((2, 75)) == "2 hours 75 minutes"
    assert duration.show((1, 0)) == "1 hour"
