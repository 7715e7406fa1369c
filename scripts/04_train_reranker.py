#!/usr/bin/env python
"""Stage 5: train the listwise LoRA reranker per fold and rerank its validation candidates.
Same as `eedi train-reranker`.

    python scripts/04_train_reranker.py --config configs/cpu.yaml [key=value ...]
"""
import sys

from eedi.cli import main

# The guard matters: with reranker.backend=vllm, vLLM spawns worker processes that re-import this file.
if __name__ == "__main__":
    sys.exit(main(["train-reranker", *sys.argv[1:]]))
