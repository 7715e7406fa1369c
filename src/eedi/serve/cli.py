"""``eedi serve`` and ``eedi export-labels``: hooked into :mod:`eedi.cli` by two calls.

    eedi serve --run-dir RUN [--host 127.0.0.1] [--port 8000] [--token T] [--reranker | --no-reranker]
    eedi export-labels --run-dir RUN --out train.csv

This module imports nothing heavy at import time (the models, torch and FastAPI load in the command that uses
them): every ``eedi`` process imports it, each pipeline stage's included.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from eedi.errors import EediError
from eedi.layout import RunLayout

log = logging.getLogger(__name__)

COMMANDS = ("serve", "export-labels")


def add_parsers(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a trained run: the labelling page, a JSON API, the label store",
        description="Load RUN's retriever, index and (optionally) reranker once and serve them: the labelling page "
        "at /, the API at /predict, /submission, /labels, /healthz (OpenAPI at /docs). Labels go to "
        "RUN/labels.sqlite. Runs in the training environment (.venv-train): the reranker is scored "
        "with transformers, no vLLM needed.",
    )
    serve.add_argument("--run-dir", required=True, metavar="RUN", help="a run directory made by `eedi run`")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--token",
        default=os.environ.get("EEDI_SERVE_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on the API (default: $EEDI_SERVE_TOKEN, else none)",
    )
    serve.add_argument(
        "--reranker",
        dest="reranker",
        action="store_true",
        default=None,
        help="load the run's reranker and fail if it has none (default: load it when there is one)",
    )
    serve.add_argument("--no-reranker", dest="reranker", action="store_false", help="retrieval only")
    serve.add_argument(
        "--reranker-model",
        choices=["auto", "merged", "gptq", "awq"],
        help="which reranker weights (default: the run's infer.reranker_model)",
    )
    serve.add_argument(
        "--reranker-backend",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers (default, any environment) or vllm (the inference environment only)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per model call (default 1: one short query gains little from a second "
        "thread, and on a busy machine two OpenMP threads were 15x slower; docs/serve.md)",
    )
    export = subparsers.add_parser(
        "export-labels",
        help="write the labels accepted in `eedi serve` as Kaggle train.csv rows",
        description="Write RUN/labels.sqlite as Kaggle train.csv rows (one per question; the latest label of each "
        "wrong answer wins), ready to append to a train.csv for the next training run.",
    )
    export.add_argument("--run-dir", required=True, metavar="RUN")
    export.add_argument("--out", required=True, help="CSV file to write (atomically)")


def _user_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def dispatch(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is one of ours; None hands it back to :mod:`eedi.cli`."""
    if args.command not in COMMANDS:
        return None
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        return _user_error(f"run directory {run_dir} does not exist")
    if args.command == "export-labels":
        return _export(run_dir, Path(args.out))
    return _serve(args, run_dir)


def _export(run_dir: Path, out: Path) -> int:
    from eedi.serve.labels import LabelStore
    from eedi.serve.predictor import run_info

    layout = RunLayout(run_dir)
    if not layout.labels_db.is_file():
        return _user_error(f"{layout.labels_db} does not exist: no label has been recorded for this run yet")
    if not layout.manifest.is_file():
        return _user_error(f"{run_dir} is not a run directory (no manifest.json)")
    store = LabelStore.in_run_dir(run_dir, run_info(run_dir))
    rows = store.export()
    store.export_csv(out)
    print(
        f"wrote {out}: {len(rows)} question(s), {int(rows.filter(like='Misconception').notna().sum().sum())} "
        f"labelled wrong answer(s) from {store.count()} label(s)"
    )
    return 0


def _serve(args: argparse.Namespace, run_dir: Path) -> int:
    import torch

    from eedi.serve.labels import LabelStore
    from eedi.serve.predictor import Predictor, retriever_path, run_config

    if not 0 < args.port < 65536:
        return _user_error(f"--port {args.port} is not a TCP port")
    try:  # the cheap checks first, before any model loads
        retriever_path(run_dir, run_config(run_dir))
    except EediError as err:
        return _user_error(str(err))
    try:
        # lazy: the web stack is the optional `serve` extra; without it every other command still works
        import uvicorn

        from eedi.serve.app import create_app
    except ImportError as err:
        return _user_error(f"{err.name} is not installed: pip install -e '.[serve]' (or `make setup`)")
    if args.threads < 1:
        return _user_error(f"--threads {args.threads}: need at least 1")
    torch.set_num_threads(args.threads)
    try:
        predictor = Predictor(
            run_dir,
            use_reranker=args.reranker,
            reranker_backend=args.reranker_backend,
            reranker_model=args.reranker_model,
        )
        torch.set_num_threads(args.threads)  # again: a run's runtime.num_threads is applied while loading
    except EediError as err:  # includes the vllm backend outside the inference environment
        return _user_error(str(err))
    store = LabelStore.in_run_dir(run_dir, predictor.run)
    app = create_app(predictor, store, token=args.token)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        log.warning(
            "serving on %s without --token: anyone who can reach this port can read and write labels", args.host
        )
    print(
        f"serving {predictor.run.run_id} on http://{args.host}:{args.port}/ (API docs at /docs); "
        f"labels in {store.path}",
        flush=True,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        predictor.close()
    return 0
