"""The one error hierarchy. The CLI catches :class:`EediError`, prints its message on one line and exits 2.

Library code raises these for anything a user can fix (a bad file, a bad config key, a stage that has not
run yet); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class EediError(Exception):
    """Base of every error a user can fix; its message says what to do."""


class ConfigError(EediError, ValueError):
    """A config file or override is invalid. The message names the key."""


class DataError(EediError, ValueError):
    """Bad input data. The message names the file, the row and the column."""

    def __init__(self, file: str | Path, message: str, row: int | None = None, column: str | None = None):
        where = [str(file)]
        if row is not None:
            # row is the 1-based data row; the CSV line adds the header line.
            where.append(f"row {row} (line {row + 1})")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(": ".join([", ".join(where), message]))
        self.file, self.row, self.column, self.message = str(file), row, column, message


class MissingInputError(EediError, FileNotFoundError):
    """An upstream output is missing. The message names the stage that writes it."""

    def __init__(self, what: str | Path, stage: str, detail: str = ""):
        super().__init__(f"{what} not found{': ' + detail if detail else ''}: run `eedi {stage}` first (or `eedi run`)")
        self.what, self.stage = str(what), stage


class StageFailed(EediError):
    """A stage's process exited non-zero (``eedi run``); finished stages are skipped on the next run."""


class DownloadError(EediError):
    """The competition files could not be fetched (credentials, network, rules not accepted, bad archive)."""


class EnvironmentMissing(EediError):
    """A stage needs the other side's virtual environment and it is not there."""
