#!/usr/bin/env python
"""Stage 6 of 7, `evaluate`: average every fold's metrics, write metrics.json['mean'] and report.html.

Same as `eedi evaluate`; runs in the train environment (.venv-train).

    python scripts/06_evaluate.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
