#!/usr/bin/env python
"""Stage 4 of 7, `train-reranker`: fine-tune the listwise LoRA reranker per fold, rerank its validation candidates.

Same as `eedi train-reranker`; runs in the train environment (.venv-train).

    python scripts/04_train_reranker.py --config configs/cpu.yaml [key=value ...]
"""

import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-reranker", *sys.argv[1:]]))
