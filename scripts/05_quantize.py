#!/usr/bin/env python
"""Stage 5 of 7, `quantize`: merge the reranker, quantize it to 4-bit weights with GPTQ and AWQ, reload and measure.

Same as `eedi quantize`; runs in the train environment (.venv-train).

    python scripts/05_quantize.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["quantize", *sys.argv[1:]]))
