"""Writing the sample folder (every file atomically)."""

from __future__ import annotations

from pathlib import Path

from eedi.fileio import atomic_path
from eedi.sample.build import FILES, build_sample


def generate_sample(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write train.csv, test.csv, misconception_mapping.csv, sample_submission.csv into out_dir.

    Each file is written to a temporary file beside it and renamed into place. Returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = build_sample(seed)
    written = {}
    for name, filename in FILES.items():
        with atomic_path(out / filename) as tmp:
            # "\n" on every platform: the committed files are byte-identical to the generator's output
            getattr(sample, name).to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8")
        written[name] = out / filename
    return written
