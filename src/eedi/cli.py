"""``eedi``: one subcommand per stage, plus ``run`` for all of them in order.

eedi <stage> --config CONFIG [key=value ...]
eedi run --config configs/cpu.yaml data.dir=DIR run_dir=OUT folds.use=[0] [-v] [--dry-run]
eedi summary RUN_DIR
eedi download --out DIR [--zip ZIP]
eedi make-sample --out data/sample
eedi setup-models --out models
eedi make-holdout --data DIR --out OUT [--test-share 0.25] [--seed 42] [--force]
eedi score SUBMISSION --labels OUT/labels.csv [--train TRAIN_CSV] [--mapping MAPPING_CSV] [--unseen-share 0.75] [--json]
eedi serve --run-dir RUN [--host 127.0.0.1] [--port 8000] [--token T] [--no-reranker]
eedi export-labels --run-dir RUN --out train.csv
eedi config-docs --out docs/config.md [--check]
eedi plan --config CONFIG [--gpus 8x80GB] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from eedi.config import load_config, reference_markdown
from eedi.data.download import COMPETITION, download
from eedi.errors import EediError
from eedi.evaluation.metrics import UNSEEN_SHARE
from eedi.fileio import write_text
from eedi.pipeline.registry import STAGES
from eedi.serve.cli import add_parsers as add_serve_parsers
from eedi.serve.cli import dispatch as dispatch_serve

# Each command imports the rest where it runs: every pipeline stage is an `eedi <stage>` process, and importing
# every command's libraries (torch, transformers, peft) in each of them cost seconds per stage.

log = logging.getLogger("eedi")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config (default: built-in defaults)")
    parser.add_argument("--force", action="store_true", help="re-run even if the manifest says it is current")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. folds.use=[0,1]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eedi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs; with run: stream every stage's log")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        _add_config_args(sub.add_parser(stage.name, help=stage.help))
    run = sub.add_parser("run", help="run every stage in order, skipping those already current")
    _add_config_args(run)
    run.add_argument("--stages", help="comma-separated subset of stages")
    run.add_argument(
        "--dry-run", action="store_true", help="print which stages would run and why (the changed keys); run none"
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also stream each stage's full log (vLLM, transformers, llm-compressor) to the console",
    )
    summary = sub.add_parser("summary", help="print a run's summary table again (metrics per fold, time per stage)")
    summary.add_argument("run_dir", metavar="RUN_DIR")
    download = sub.add_parser(
        "download",
        help="fetch the competition files with the Kaggle API and check their schema",
        description="Download the competition's CSVs into OUT (atomically, after the same validation `prepare` runs). "
        "Needs Kaggle credentials (KAGGLE_API_TOKEN, KAGGLE_USERNAME + KAGGLE_KEY, or ~/.kaggle/kaggle.json) "
        "and the competition's rules accepted; --zip unpacks an archive downloaded by hand instead.",
    )
    download.add_argument("--out", required=True, help="folder to write (a Kaggle folder: data.dir for `eedi run`)")
    download.add_argument("--zip", dest="zip_path", metavar="ZIP", help="an archive downloaded by hand (no network)")
    download.add_argument("--competition", default=COMPETITION)
    download.add_argument("--force", action="store_true", help="replace OUT if it exists")
    sample = sub.add_parser("make-sample", help="write the procedural sample data set")
    sample.add_argument("--out", default="data/sample")
    sample.add_argument("--seed", type=int, default=0)
    report = sub.add_parser("report", help="re-render run_dir/report.html from a run's outputs")
    _add_config_args(report)
    package = sub.add_parser(
        "package-kaggle", help="package a run (wheels, retriever, reranker, config) as a Kaggle dataset folder"
    )
    _add_config_args(package)
    package.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    package.add_argument("--with-deps", action="store_true", help="also download the inference dependencies' wheels")
    docs = sub.add_parser("config-docs", help="write the config reference (docs/config.md) from the schema")
    docs.add_argument("--out", default="docs/config.md")
    docs.add_argument(
        "--check", action="store_true", help="exit 1 if OUT differs from the schema instead of writing it"
    )
    plan = sub.add_parser(
        "plan",
        help="the GPU memory each stage of a config needs, from architecture configs alone (no download)",
        description="Per stage: parameters, weights at the configured precision, LoRA and optimizer state, "
        "activations with and without gradient checkpointing, vLLM KV cache, and the per-GPU peak compared with "
        "--gpus (or the GPUs torch sees). A stage that does not fit gets a FLAG line naming the key to change, "
        "and the exit status is 1 (0: everything fits or no GPU to compare with; 2: a bad config).",
    )
    _add_config_args(plan)
    plan.add_argument("--gpus", help="COUNTxSIZE, e.g. 8x80GB or 2x16GB (GB = 1e9 bytes; GiB also taken)")
    plan.add_argument("--stages", help="comma-separated stage names or prefixes, e.g. predict (the Kaggle notebook)")
    models = sub.add_parser("setup-models", help="convert the small PyPI models into a local models folder")
    models.add_argument("--out", default="models")
    holdout = sub.add_parser(
        "make-holdout",
        help="split a labelled train.csv by question into a Kaggle-shaped local test folder",
        description="Split DIR/train.csv by question into OUT: train.csv (the other questions, rows unchanged), "
        "test.csv (held-out questions, no labels), sample_submission.csv, misconception_mapping.csv, "
        "holdout.json and labels.csv. OUT works as data.dir for `eedi prepare`/`eedi run`. "
        "labels.csv holds the answers: it is for `eedi score` only, never give it to the model.",
    )
    holdout.add_argument(
        "--data", required=True, metavar="DIR", help="folder with train.csv and misconception_mapping.csv"
    )
    holdout.add_argument("--out", required=True, help="folder to write (atomically)")
    holdout.add_argument("--test-share", type=_share, default=0.25, help="share of questions held out (default 0.25)")
    holdout.add_argument("--seed", type=int, default=42, help="same seed -> same split (default 42)")
    holdout.add_argument("--force", action="store_true", help="replace OUT if it is a previous make-holdout folder")
    score = sub.add_parser(
        "score",
        help="score a submission.csv against a make-holdout labels.csv (MAP@25, recall@1/5/25)",
        description="Score SUBMISSION on the labelled rows of LABELS as Kaggle does (MAP@25), with recall@1/5/25 "
        "and the seen/unseen split when a training train.csv is given or sits beside LABELS.",
    )
    score.add_argument(
        "submission", metavar="SUBMISSION", help="submission.csv: QuestionId_Answer,MisconceptionId (25 ids)"
    )
    score.add_argument("--labels", required=True, help="labels.csv written by make-holdout (never given to the model)")
    score.add_argument(
        "--train", metavar="TRAIN_CSV", help="train.csv that defines 'seen' (default: train.csv beside LABELS, if any)"
    )
    score.add_argument(
        "--mapping",
        metavar="MAPPING_CSV",
        help="misconception_mapping.csv the ids must be in (default: the one beside LABELS, if any)",
    )
    score.add_argument(
        "--unseen-share",
        type=_unit_share,
        default=UNSEEN_SHARE,
        help=f"weight of unseen pairs in MAP@25 (mix) (default {UNSEEN_SHARE}, evaluation.unseen_share)",
    )
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_serve_parsers(sub)  # serve, export-labels
    return parser


def _fraction(text: str, *, closed: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1{'' if closed else ' (exclusive)'}, got {text}")
    return value


def _share(text: str) -> float:
    return _fraction(text, closed=False)


def _unit_share(text: str) -> float:
    return _fraction(text, closed=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (`eedi run ... data.dir=X -v folds.use=[1]`): argparse stops
    # collecting a positional list at the first option, so the rest arrive here as unknown arguments.
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = [*args.overrides, *rest]
    logging.basicConfig(
        # `eedi run` keeps its console for the stage lines: its own INFO logs would only repeat them
        level=logging.DEBUG if args.verbose else (logging.WARNING if args.command == "run" else logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if (served := dispatch_serve(args)) is not None:
            return served
        if args.command == "make-sample":
            from eedi.sample.write import generate_sample

            for path in generate_sample(args.out, seed=args.seed).values():
                print(f"wrote {path}")
            return 0
        if args.command == "config-docs":
            text = reference_markdown()
            if args.check:
                current = Path(args.out).read_text(encoding="utf-8") if Path(args.out).exists() else ""
                if current != text:
                    print(f"{args.out} is stale: run `eedi config-docs --out {args.out}`", file=sys.stderr)
                    return 1
                return 0
            print(write_text(args.out, text))
            return 0
        if args.command == "setup-models":
            from eedi.pretrained import setup_models

            for name, path in setup_models(args.out).items():
                print(f"{name}: {path}")
            return 0
        if args.command == "make-holdout":
            from eedi.evaluation.holdout import make_holdout

            summary = make_holdout(args.data, args.out, test_share=args.test_share, seed=args.seed, force=args.force)
            q, pairs = summary["questions"], summary["pairs"]
            print(
                f"wrote {args.out}: {q['train']} train / {q['test']} test questions; {pairs['test_labelled']} "
                f"test labels ({summary['test_labels_unseen']} of misconceptions unseen in its train.csv)"
            )
            print(f"{args.out}/labels.csv is for `eedi score` only: never give it to the model")
            return 0
        if args.command == "summary":
            from eedi.evaluation.summary import summary_text

            print(summary_text(args.run_dir))
            return 0
        if args.command == "download":
            result = download(args.out, args.competition, zip_path=args.zip_path, force=args.force)
            print(
                f"wrote {result['out']}: {result['train_questions']} train questions, {result['test_questions']} "
                f"test questions, {result['misconceptions']} misconceptions"
            )
            return 0
        if args.command == "score":
            from eedi.evaluation.holdout import format_score, score_submission

            result = score_submission(
                args.submission, args.labels, train=args.train, mapping=args.mapping, unseen_share=args.unseen_share
            )
            print(json.dumps(result, sort_keys=True) if args.json else format_score(result))
            return 0
        cfg = load_config(args.config, args.overrides)
        if cfg.runtime.num_threads:
            import torch

            torch.set_num_threads(cfg.runtime.num_threads)
        if args.command == "report":
            from eedi.evaluation.report import build_report

            print(build_report(cfg.run_dir))
            return 0
        if args.command == "package-kaggle":
            from eedi.submit.kaggle import package

            print(package(cfg, args.out, with_deps=args.with_deps))
            return 0
        if args.command == "plan":
            from eedi.plan import parse_gpus, plan_config, render, visible_gpus

            gpus = parse_gpus(args.gpus) if args.gpus else visible_gpus()
            only = args.stages.split(",") if args.stages else None
            result = plan_config(cfg, gpus, args.config or "<defaults>", only)
            print(render(result))
            return 1 if result.flagged else 0
        from eedi.pipeline.runner import run_all, run_stage

        if args.command == "run":
            stages = args.stages.split(",") if args.stages else None
            if args.dry_run:
                from eedi.pipeline.dryrun import dry_run_text

                print(dry_run_text(cfg, stages, force=args.force))
                return 0
            run_all(args.config, args.overrides, cfg, force=args.force, stages=stages, verbose=args.verbose)
            return 0

        run_stage(cfg, args.command, force=args.force)
        return 0
    except EediError as err:
        # A user error: one line, no traceback (the message names the file, key or stage to run).
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
