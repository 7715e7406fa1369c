#!/usr/bin/env python
"""Stage 1: validate the Kaggle CSVs, pivot to (question, wrong answer) pairs, assign folds.

    python scripts/00_prepare.py --config configs/cpu.yaml data.dir=data/sample run_dir=runs/cpu
"""
import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
