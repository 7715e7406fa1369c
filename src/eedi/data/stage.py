"""Stage ``prepare``: Kaggle CSVs -> validated (question, wrong answer) pairs + folds.

Reads ``train.csv``, ``misconception_mapping.csv`` and, when present, ``test.csv`` and
``sample_submission.csv`` from ``data.dir``; validates them strictly; pivots the four answers into
one row per wrong answer; renders the query text; and assigns every training question to a fold.
Writes ``pairs.parquet``, ``misconceptions.parquet``, ``folds.csv`` and ``prepare_summary.json``
(:class:`eedi.layout.RunLayout`; schemas in ``docs/stages.md``).
"""

from __future__ import annotations

import logging

from eedi.config import Config
from eedi.data.folds import assign_folds, fold_report
from eedi.data.kaggle import load_kaggle_dir
from eedi.data.pairs import build_pairs
from eedi.fileio import file_sha256, write_csv, write_json, write_parquet
from eedi.layout import RunLayout

log = logging.getLogger(__name__)


def run(config: Config) -> dict:
    """Validate, pivot and fold the Kaggle folder ``data.dir``. Returns a summary for the manifest."""
    data = load_kaggle_dir(config.data.dir)
    pairs = build_pairs(data, config.data)
    folds = assign_folds(pairs, config.folds)
    report = fold_report(pairs, folds)
    layout = RunLayout(config.run_dir)
    write_parquet(layout.misconceptions, data.mapping)
    write_parquet(layout.pairs, pairs)
    write_csv(layout.folds, folds)
    train_pairs = pairs[pairs["split"] == "train"]
    summary = {
        "train_questions": int(len(data.train)),
        "train_pairs": int(len(train_pairs)),
        "train_labelled_pairs": int(train_pairs["MisconceptionId"].notna().sum()),
        "test_pairs": int((pairs["split"] == "test").sum()),
        "misconceptions": int(len(data.mapping)),
        "folds_sha256": file_sha256(layout.folds),
        "folds": report,
    }
    write_json(layout.prepare_summary, summary)
    for name, fold in report.items():
        log.info(
            "%s: %d val pairs, %d labelled, %d unseen (%.0f%%)",
            name,
            fold["val_pairs"],
            fold["val_labelled"],
            fold["val_unseen"],
            100 * fold["unseen_share"],
        )
    return summary
