#!/usr/bin/env python
"""Stage 7: rerank the test candidates and write submission.csv.

    python scripts/07_infer.py --config configs/cpu.yaml run_dir=runs/cpu
"""
import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
