#!/usr/bin/env python
"""Stage 2 of 7, `train-retriever`: fine-tune the bi-encoder retriever per fold (hard + random + in-batch negatives).

Same as `eedi train-retriever`; runs in the train environment (.venv-train).

    python scripts/02_train_retriever.py --config configs/cpu.yaml [key=value ...]
    torchrun --nproc_per_node 4 scripts/02_train_retriever.py --config configs/qwen2.5-14b.yaml
"""

import sys

from eedi.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-retriever", *sys.argv[1:]]))
