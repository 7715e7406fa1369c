#!/usr/bin/env python
"""Stage 4: FAISS index + top-K candidates + retriever metrics. Same as `eedi index`.

    python scripts/03_index.py --config configs/cpu.yaml [key=value ...]
"""
import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
