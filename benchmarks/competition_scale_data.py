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
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "train.csv": train,
        "test.csv": pd.concat(tests, ignore_index=True),
        "misconception_mapping.csv": mapping,
        "sample_submission.csv": pd.concat(subs, ignore_index=True),
    }
    for name, frame in files.items():
        write_csv(out / name, frame)
    labelled = sum(train[f"Misconception{x}Id"].notna().sum() for x in LETTERS)
    return {
        "train_questions": len(train),
        "labelled_pairs": int(labelled),
        "misconceptions": len(mapping),
        "test_questions": len(files["test.csv"]),
        "seeds": seed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build/competition-scale")
    args = parser.parse_args()
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
