#!/usr/bin/env python
"""Stage 1 of 7, `synthesize`: generate questions for misconceptions with few or no training examples (vLLM).

Same as `eedi synthesize`; runs in the infer environment (.venv-infer).

    python scripts/01_synthesize.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

# vLLM starts its workers with spawn: they re-import this file, which must not start the stage again.
if __name__ == "__main__":
    sys.exit(main(["synthesize", *sys.argv[1:]]))
