#!/usr/bin/env python
"""Stage 0 of 7, `prepare`: validate the Kaggle CSVs, pivot to (question, wrong answer) pairs, assign folds.

Same as `eedi prepare`; runs in the train environment (.venv-train).

    python scripts/00_prepare.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
