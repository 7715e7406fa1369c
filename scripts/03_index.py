#!/usr/bin/env python
"""Stage 3 of 7, `index`: embed the misconceptions into a FAISS index, write top-K candidates and retriever metrics.

Same as `eedi index`; runs in the train environment (.venv-train).

    python scripts/03_index.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
