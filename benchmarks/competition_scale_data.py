#!/usr/bin/env python
"""A Kaggle-schema data directory the size of the competition's, for timing the CPU config at scale.

    python benchmarks/competition_scale_data.py --out build/competition-scale
    python benchmarks/pipeline_run.py --config configs/cpu.yaml --run-dir runs/scale \\
        data.dir=build/competition-scale folds.use=[0]

The competition data cannot be redistributed, and the issue's budget (one fold of the full data
in <= 30 minutes on 2 cores with configs/cpu.yaml) is about *size*: 1,869 training questions
(~4,370 wrong answers with a misconception) and 2,587 misconceptions, which set the cost of
embedding, indexing, reranking the validation fold and the synthesis targets. This script
merges the procedural sample for several seeds (questions re-keyed; the same misconception text
keeps one id) and pads misconception_mapping.csv to 2,587 rows with texts no question uses
(the real mapping has about a thousand such rows too), each a catalogue text with a numbered
suffix. It is a load test: MAP@25 on it says nothing about the real data.

With ``--real DIR`` (a Kaggle folder such as ../shared/eedi-dev, 1,402 questions) it pads the real
questions instead: 1,869 - 1,402 of them are repeated under new QuestionIds, and test.csv holds 685
questions (the size of the competition's hidden test set) drawn from them without their labels. Texts,
lengths and the misconception table are the real ones, so this times the real-data profile at the
competition's size; it is not a data set to score:

    python benchmarks/competition_scale_data.py --real ../shared/eedi-dev --out build/real-scale
    python benchmarks/pipeline_run.py --config configs/cpu-kaggle.yaml --emulate-avx2 --target-minutes 30 \
        --run-dir runs/real-scale data.dir=build/real-scale
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from eedi.data.schema import LETTERS
from eedi.fileio import write_csv
from eedi.sample.build import build_sample

COMPETITION_QUESTIONS = 1869
COMPETITION_MISCONCEPTIONS = 2587
COMPETITION_TEST_QUESTIONS = 685


def build(out: Path, questions: int = COMPETITION_QUESTIONS, misconceptions: int = COMPETITION_MISCONCEPTIONS) -> dict:
    trains, tests, subs = [], [], []
    ids: dict[str, int] = {}
    next_qid, seed = 0, 0
    while sum(len(t) for t in trains) < questions:
        sample = build_sample(seed)
        name_of = dict(
            zip(sample.misconception_mapping["MisconceptionId"], sample.misconception_mapping["MisconceptionName"])
        )
        for name in sample.misconception_mapping["MisconceptionName"]:
            ids.setdefault(name, len(ids))
        remap = {old: ids[name] for old, name in name_of.items()}
        for frame, target in ((sample.train, trains), (sample.test, tests)):
            frame = frame.copy()
            frame["QuestionId"] = frame["QuestionId"] + next_qid
            for x in LETTERS:
                column = f"Misconception{x}Id"
                if column in frame:
                    frame[column] = frame[column].map(lambda v, ids=remap: float(ids[int(v)]) if pd.notna(v) else v)
            target.append(frame)
        sub = sample.sample_submission.copy()
        qid, letter = sub["QuestionId_Answer"].str.split("_", expand=True).T.values
        sub["QuestionId_Answer"] = [f"{int(q) + next_qid}_{x}" for q, x in zip(qid, letter)]
        subs.append(sub)
        next_qid += len(sample.train) + len(sample.test)
        seed += 1
    train = pd.concat(trains, ignore_index=True).head(questions)
    names = list(ids)
    base = list(names)
    k = 0
    while len(names) < misconceptions:  # unused rows, as in the real mapping's long tail
        names.append(f"{base[k % len(base)]} (variant {k // len(base) + 1})")
        k += 1
    mapping = pd.DataFrame({"MisconceptionId": range(len(names)), "MisconceptionName": names})
    test = pd.concat(tests, ignore_index=True)
    return {**write_folder(out, train, test, mapping, pd.concat(subs, ignore_index=True)), "seeds": seed}


def write_folder(out: Path, train, test, mapping, sample_submission) -> dict:
    """Write the four Kaggle CSVs to ``out``; return their sizes."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "train.csv": train,
        "test.csv": test,
        "misconception_mapping.csv": mapping,
        "sample_submission.csv": sample_submission,
    }
    for name, frame in files.items():
        write_csv(out / name, frame)
    labelled = sum(train[f"Misconception{x}Id"].notna().sum() for x in LETTERS)
    return {
        "train_questions": len(train),
        "labelled_pairs": int(labelled),
        "misconceptions": len(mapping),
        "test_questions": len(test),
        "test_rows": len(sample_submission),
    }


def build_from_real(
    real: Path,
    out: Path,
    questions: int = COMPETITION_QUESTIONS,
    test_questions: int = COMPETITION_TEST_QUESTIONS,
    seed: int = 0,
) -> dict:
    """Pad a real Kaggle folder's train.csv to ``questions`` by repeating questions under new ids, and
    draw ``test_questions`` of them, unlabelled, as test.csv."""
    train = pd.read_csv(real / "train.csv")
    mapping = pd.read_csv(real / "misconception_mapping.csv")
    if len(train) > questions:
        raise SystemExit(f"{real / 'train.csv'} has {len(train)} questions, more than the {questions} asked for")
    next_qid = int(train["QuestionId"].max()) + 1
    extra = train.sample(n=questions - len(train), random_state=seed, replace=questions - len(train) > len(train))
    extra = extra.assign(QuestionId=range(next_qid, next_qid + len(extra)))
    train = pd.concat([train, extra], ignore_index=True)
    next_qid += len(extra)
    test = train.sample(n=test_questions, random_state=seed + 1).drop(columns=[f"Misconception{x}Id" for x in LETTERS])
    test = test.assign(QuestionId=range(next_qid, next_qid + len(test))).reset_index(drop=True)
    rows = [
        f"{q}_{x}" for q, correct in zip(test["QuestionId"], test["CorrectAnswer"]) for x in LETTERS if x != correct
    ]
    first = " ".join(str(i) for i in mapping["MisconceptionId"].head(25))
    sample = pd.DataFrame({"QuestionId_Answer": rows, "MisconceptionId": first})
    return {**write_folder(out, train, test, mapping, sample), "repeated_questions": len(extra)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/competition-scale")
    parser.add_argument("--real", type=Path, default=None, help="pad this real Kaggle folder instead of the sample")
    args = parser.parse_args()
    print(build_from_real(args.real, Path(args.out)) if args.real else build(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
