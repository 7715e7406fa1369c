#!/usr/bin/env python
"""Stage 6: average every fold's metrics and write report.html.

    python scripts/06_evaluate.py --config configs/cpu.yaml run_dir=runs/cpu
"""
import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
