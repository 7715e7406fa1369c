"""Readers of the prepare stage's outputs, used by every later stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eedi.errors import MissingInputError
from eedi.layout import RunLayout


def _existing(path: Path) -> Path:
    if not path.exists():
        raise MissingInputError(path, "prepare")
    return path


def load_pairs(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(_existing(RunLayout(run_dir).pairs))


def load_folds(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(_existing(RunLayout(run_dir).folds))


def load_misconceptions(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(_existing(RunLayout(run_dir).misconceptions))
