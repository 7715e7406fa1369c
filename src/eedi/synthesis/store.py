"""The synthetic rows on disk: schema with provenance, resume state, and the reader other stages use."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from eedi.config import Config
from eedi.data.artifacts import load_misconceptions
from eedi.data.kaggle import load_questions
from eedi.data.pairs import pivot_pairs
from eedi.data.schema import LETTERS, PAIR_COLUMNS, TRAIN_COLUMNS
from eedi.errors import DataError
from eedi.fileio import file_sha256, read_json, write_csv, write_json
from eedi.layout import RunLayout
from eedi.synthesis.engine import Candidate

log = logging.getLogger(__name__)


PROVENANCE_COLUMNS = [
    "Source",
    "TargetMisconceptionId",
    "GeneratorModel",
    "PromptHash",
    "Seed",
    "JudgeScore",
    "FewShotQuestionIds",
]
SYNTHETIC_COLUMNS = TRAIN_COLUMNS + PROVENANCE_COLUMNS
REJECTED_COLUMNS = ["TargetMisconceptionId", "Reason", "Completion"]
# Far above Kaggle's QuestionIds (< 2,000), so synthetic and real ids never collide.
QUESTION_ID_START = 1_000_000
SOURCE = "synthetic"


def _ids(names: pd.Series, ids: pd.Series) -> dict[str, int]:
    known = pd.DataFrame({"name": names, "id": ids}).dropna().drop_duplicates("name")
    return {str(n): int(i) for n, i in zip(known["name"], known["id"])}


def candidate_row(
    c: Candidate, question_id: int, model: str, construct_ids: dict[str, int], subject_ids: dict[str, int]
) -> dict[str, str]:
    """A train.csv row (all values as CSV strings; empty = unknown) plus provenance."""
    f = c.fields
    row = {
        "QuestionId": str(question_id),
        "ConstructId": str(construct_ids.get(f["ConstructName"], "")),
        "ConstructName": f["ConstructName"],
        "SubjectId": str(subject_ids.get(f["SubjectName"], "")),
        "SubjectName": f["SubjectName"],
        "CorrectAnswer": f["CorrectAnswer"],
        "QuestionText": f["QuestionText"],
    }
    for x in LETTERS:
        row[f"Answer{x}Text"] = f[f"Answer{x}Text"]
        row[f"Misconception{x}Id"] = str(c.target.misconception_id) if x == f["MisconceptionAnswer"] else ""
    row.update(
        {
            "Source": SOURCE,
            "TargetMisconceptionId": str(c.target.misconception_id),
            "GeneratorModel": model,
            "PromptHash": c.target.prompt_hash,
            "Seed": str(c.seed),
            "JudgeScore": "" if c.judge_score is None else str(c.judge_score),
            "FewShotQuestionIds": " ".join(str(e.question_id) for e in c.target.examples),
        }
    )
    return row


# --------------------------------------------------------------------------- state


def _frame_hash(df: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()


def settings_hash(config: Config, pairs: pd.DataFrame, misconceptions: pd.DataFrame) -> str:
    """What a target's result depends on. Budget and target selection are left out: raising the budget
    resumes, it doesn't restart."""
    syn = config.synthetic.model_dump(
        mode="json", exclude={"enabled", "use", "budget", "max_train_examples", "checkpoint_every"}
    )
    blob = json.dumps(
        {
            "synthetic": syn,
            "dtype": config.runtime.dtype,
            "pairs": _frame_hash(pairs),
            "misconceptions": _frame_hash(misconceptions),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_strings(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=columns, dtype=str)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; delete {path.parent} to start over")
    return df[columns]


@dataclass
class State:
    settings_hash: str
    targets: dict[str, dict]
    rows: pd.DataFrame
    rejected: pd.DataFrame


def load_state(layout: RunLayout, current_hash: str) -> State:
    """What earlier runs finished. Rows of targets missing from state.json (a run stopped between writing
    the CSV and the state) are dropped, so those targets are generated again."""
    state = read_json(layout.synthetic_state, default=None)
    empty = State(
        current_hash,
        {},
        pd.DataFrame(columns=SYNTHETIC_COLUMNS, dtype=str),
        pd.DataFrame(columns=REJECTED_COLUMNS, dtype=str),
    )
    if state is None:
        return empty
    if state.get("settings_hash") != current_hash:
        log.warning(
            "synthetic settings or data changed since the last run (%s -> %s): generating from scratch",
            state.get("settings_hash"),
            current_hash,
        )
        return empty
    done = set(state["targets"])
    rows = _read_strings(layout.synthetic_rows, SYNTHETIC_COLUMNS)
    rejected = _read_strings(layout.synthetic_rejected, REJECTED_COLUMNS)
    return State(
        current_hash,
        state["targets"],
        rows[rows["TargetMisconceptionId"].isin(done)],
        rejected[rejected["TargetMisconceptionId"].isin(done)],
    )


def save_state(layout: RunLayout, state: State) -> None:
    # The CSVs first, state.json last: state.json is the commit point (see load_state).
    write_csv(layout.synthetic_rows, state.rows[SYNTHETIC_COLUMNS])
    write_csv(layout.synthetic_rejected, state.rejected[REJECTED_COLUMNS])
    write_json(layout.synthetic_state, {"settings_hash": state.settings_hash, "targets": state.targets})


# --------------------------------------------------------------------------- for the training stages


def training_files(config: Config, *paths: Path) -> dict[str, str | None]:
    """sha256 of the files a model trains on: pairs.parquet, misconceptions.parquet, ``paths``, and the synthetic
    rows when synthetic.use is on (None where a file does not exist). Part of a trained model's fingerprint."""
    layout = RunLayout(config.run_dir)
    files = [layout.pairs, layout.misconceptions, *paths, *([layout.synthetic_rows] if config.synthetic.use else [])]
    return {str(Path(p).relative_to(layout.root)): file_sha256(p) if Path(p).is_file() else None for p in files}


def load_synthetic_pairs(config: Config) -> pd.DataFrame:
    """The synthetic rows as pairs.parquet rows (split="synthetic"), one per labelled synthetic distractor.

    Empty (with the pairs columns) when synthetic.use is false or nothing was generated: synthesize is an
    optional upstream of the training stages, so a run without it (``--stages``) trains on real rows only,
    with a warning. Rows whose MisconceptionId is not in misconceptions.parquet are dropped. The caller
    adds them to a fold's training part only: their QuestionIds are in no fold.
    """
    empty = pivot_pairs(pd.DataFrame(columns=TRAIN_COLUMNS), SOURCE, config.data.query_template)
    if not config.synthetic.use:
        return empty
    path = RunLayout(config.run_dir).synthetic_rows
    if not path.is_file():
        log.warning("synthetic.use=true but %s does not exist (stage synthesize has not run): no synthetic rows", path)
        return empty
    if pd.read_csv(path, dtype=str, nrows=1).empty:
        return empty
    questions = load_questions(path, with_labels=True, known_ids=None)
    pairs = pivot_pairs(questions, SOURCE, config.data.query_template)
    pairs = pairs[pairs["MisconceptionId"].notna()]
    known = set(load_misconceptions(config.run_dir)["MisconceptionId"].astype(int))
    valid = pairs["MisconceptionId"].astype(int).isin(known)
    if not valid.all():
        log.warning(
            "%s: %d rows with a MisconceptionId not in misconceptions.parquet dropped", path, int((~valid).sum())
        )
    return pairs[valid][PAIR_COLUMNS].reset_index(drop=True)
