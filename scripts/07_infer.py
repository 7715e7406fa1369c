#!/usr/bin/env python
"""Stage 7 of 7, `infer`: rerank the test pairs' candidates and write submission.csv.

Same as `eedi infer`; runs in the infer environment (.venv-infer).

    python scripts/07_infer.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

# vLLM starts its workers with spawn: they re-import this file, which must not start the stage again.
if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
