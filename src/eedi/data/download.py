"""``eedi download``: the competition files from Kaggle (the ``kaggle`` API client), checked before use.

The folder is written atomically and only after the files pass the same validation ``prepare`` runs
(:func:`eedi.data.kaggle.load_kaggle_dir`): a failed or partial download leaves nothing behind.
``--zip`` takes an archive downloaded by hand (the competition page's "Download all") instead.

Credentials are the Kaggle client's own: ``KAGGLE_API_TOKEN``, ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, or
``~/.kaggle/kaggle.json`` / ``~/.kaggle/access_token`` (``KAGGLE_CONFIG_DIR`` moves that folder). The
competition's rules must have been accepted on kaggle.com with the same account.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from eedi.data.kaggle import load_kaggle_dir
from eedi.errors import DataError, DownloadError
from eedi.fileio import atomic_dir

COMPETITION = "eedi-mining-misconceptions-in-mathematics"
REQUIRED = ("train.csv", "misconception_mapping.csv")


def credentials_source() -> str | None:
    """Where the Kaggle client would find credentials, or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    for name in ("kaggle.json", "access_token"):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def _fetch(competition: str, dest: Path) -> Path:
    """Download the competition archive into ``dest`` with the Kaggle API; returns the zip's path."""
    source = credentials_source()
    if source is None:
        raise DownloadError(
            "no Kaggle credentials: set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY), or save "
            "~/.kaggle/kaggle.json from kaggle.com > Settings > API; or pass --zip with the archive downloaded by hand"
        )
    # The client prints its own help and calls exit() when it cannot authenticate: keep that off the console.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi  # lazy: optional, and it authenticates on import

            api = KaggleApi()
            api.authenticate()
            api.competition_download_files(competition, path=str(dest), quiet=True)
        except SystemExit:
            raise DownloadError(f"Kaggle rejected the credentials from {source}") from None
        except ImportError as err:
            raise DownloadError(f"the Kaggle client is not installed ({err}): pip install kaggle") from None
        except Exception as err:  # the client raises requests/urllib3/HTTP errors of many types
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DownloadError(
                f"could not download competition {competition!r} with credentials from {source}: {reason} "
                "(no network? rules not accepted on kaggle.com?)"
            ) from None
    archives = sorted(dest.glob("*.zip"))
    if not archives:
        raise DownloadError(f"the Kaggle API returned no archive for {competition!r}")
    return archives[0]


def _extract(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = Path(member.filename).name  # flat: the competition archive has no folders that matter
                if member.is_dir() or not name.endswith(".csv"):
                    continue
                with zf.open(member) as src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: not a zip archive ({err})") from None
    missing = [name for name in REQUIRED if not (dest / name).is_file()]
    if missing:
        raise DownloadError(f"{archive}: no {', '.join(missing)} in the archive")


def download(
    out: str | Path, competition: str = COMPETITION, zip_path: str | Path | None = None, force: bool = False
) -> dict:
    """Fetch (or unpack ``zip_path``), validate, and write the Kaggle folder ``out``. Returns counts."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise DownloadError(f"{out} exists and is not empty: choose another --out or pass --force")
    with tempfile.TemporaryDirectory(prefix="eedi-download-") as scratch:
        archive = Path(zip_path) if zip_path else _fetch(competition, Path(scratch))
        if not archive.is_file():
            raise DownloadError(f"{archive}: file not found")
        with atomic_dir(out) as tmp:
            _extract(archive, tmp)
            try:
                data = load_kaggle_dir(tmp)  # nothing is kept when this fails
            except DataError as err:  # name the file inside the archive, not the temporary folder
                raise DataError(f"{archive}: {Path(err.file).name}", err.message, err.row, err.column) from None
    return {
        "out": str(out),
        "train_questions": int(len(data.train)),
        "test_questions": int(len(data.test)) if data.test is not None else 0,
        "misconceptions": int(len(data.mapping)),
    }
