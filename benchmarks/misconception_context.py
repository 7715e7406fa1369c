"""Write a copy of a competition folder whose misconception texts say where each misconception sits.

The retriever matches a query ("Construct: ...\\nSubject: ...\\n...") against the misconception's name alone. This
probe appends, to every name, the construct of its nearest training question and the subject most of its
``--k`` nearest training questions share, found by the zero-shot backbone (name against question text, no labels),
so seen and unseen misconceptions get their context by the same rule. Only questions outside ``--fold`` are
looked at, so the fold's validation questions stay unseen. Then run the real-data benchmark on the copy:

    .venv-train/bin/python benchmarks/misconception_context.py --folds-csv runs/rd-ansfirst/unseen/ours/folds.csv \\
        --fold 0 --out build/ctx-unseen0
    .venv-train/bin/python benchmarks/real_data.py --data build/ctx-unseen0 --fold-kinds unseen --folds 0 \\
        --systems ours --work runs/rd-ctx --out benchmarks/results/misconception_context_unseen.json

``--folds-csv`` is the ``folds.csv`` a run of the same fold kind prepared from the unchanged folder: the copy keeps
``train.csv`` as it is, so the benchmark draws the same folds from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _question_texts(train: pd.DataFrame) -> list[str]:
    return [
        f"Construct: {row.ConstructName}\nSubject: {row.SubjectName}\nQuestion: {row.QuestionText}"
        for row in train.itertuples()
    ]


def context_names(
    names: list[str], questions: pd.DataFrame, name_vectors: np.ndarray, question_vectors: np.ndarray, k: int
) -> list[str]:
    """Each name with the construct of its nearest question and the subject most of its k nearest share."""
    scores = name_vectors @ question_vectors.T
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    constructs = questions["ConstructName"].astype(str).to_numpy()
    subjects = questions["SubjectName"].astype(str).to_numpy()
    out = []
    for name, rows in zip(names, nearest):
        # most_common keeps first-seen order on ties, and rows run nearest first
        subject = Counter(subjects[rows]).most_common(1)[0][0]
        out.append(f"{name}\nConstruct: {constructs[rows[0]]}\nSubject: {subject}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eedi-dev"))
    parser.add_argument("--folds-csv", required=True, help="folds.csv of a run prepared from --data")
    parser.add_argument("--fold", type=int, required=True, help="the validation fold whose questions stay unseen")
    parser.add_argument("--out", required=True, help="the folder to write (outside the repository's data/)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--backbone", default=str(REPO / "models" / "all-minilm-l6-v2"))
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    data, out = Path(args.data), Path(args.out)
    train = pd.read_csv(data / "train.csv")
    mapping = pd.read_csv(data / "misconception_mapping.csv")
    folds = pd.read_csv(args.folds_csv)
    if set(folds["QuestionId"]) != set(train["QuestionId"]):
        sys.exit(f"{args.folds_csv}: its QuestionIds are not those of {data / 'train.csv'}")
    held = set(folds.loc[folds["fold"] == args.fold, "QuestionId"])
    if not held:
        sys.exit(f"{args.folds_csv}: no question in fold {args.fold}")
    questions = train[~train["QuestionId"].isin(held)].reset_index(drop=True)

    model = SentenceTransformer(args.backbone, device="cpu")
    names = mapping["MisconceptionName"].astype(str).tolist()
    name_vectors = model.encode(names, batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    question_vectors = model.encode(
        _question_texts(questions), batch_size=64, normalize_embeddings=True, show_progress_bar=True
    )
    enriched = mapping.assign(MisconceptionName=context_names(names, questions, name_vectors, question_vectors, args.k))

    out.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(data):
        if name.endswith(".csv") and name != "misconception_mapping.csv":
            (out / name).write_bytes((data / name).read_bytes())
    tmp = out / "misconception_mapping.csv.tmp"
    enriched.to_csv(tmp, index=False)
    tmp.replace(out / "misconception_mapping.csv")
    print(
        f"wrote {out}: {len(enriched)} misconceptions, context from {len(questions)} questions outside fold {args.fold}"
    )
    for text in enriched["MisconceptionName"].head(3):
        print("---\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
