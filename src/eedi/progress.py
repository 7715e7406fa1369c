"""Progress bars on the operator's console: one style (tqdm) for every loop a user waits for.

Under ``eedi run`` a stage's own output (library logs, Trainer dicts, vLLM engine lines) goes to
``run_dir/logs/<stage>.log``. The runner hands the stage a second file descriptor for progress bars
(``EEDI_PROGRESS_FD``), so the bars stay on the console while everything else goes to the log. Run on its
own (``eedi <stage>``), a stage draws its bars on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

PROGRESS_FD = "EEDI_PROGRESS_FD"
_console: IO[str] | None = None


def console() -> IO[str]:
    """The stream progress bars write to: the runner's descriptor, else stderr."""
    global _console
    if _console is None:
        fd = os.environ.get(PROGRESS_FD)
        try:
            _console = os.fdopen(int(fd), "w", buffering=1, closefd=False) if fd else sys.stderr
        except (OSError, ValueError):
            _console = sys.stderr
    return _console


def bar(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar with an ETA on :func:`console`; it disappears when done (the stage's end line sums it up)."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=console(), **kwargs)


def bar_factory(**defaults: Any):
    """A tqdm-compatible constructor for libraries that take one (vLLM's ``use_tqdm``)."""

    def make(*args: Any, **kwargs: Any) -> tqdm:
        kwargs = {**kwargs, **defaults, "file": console()}
        kwargs.setdefault("leave", False)
        return tqdm(*args, **kwargs)

    return make


@contextlib.contextmanager
def library_bars_on_console() -> Iterator[None]:
    """Let a library's own tqdm bars (sentence-transformers encoding, llm-compressor calibration) draw on the
    console: they write to whatever ``sys.stderr`` is when they start, while its logs keep their handlers."""
    if console() is sys.stderr:
        yield
        return
    with contextlib.redirect_stderr(console()):
        yield
