#!/usr/bin/env python
"""Stage 6: merge the reranker's LoRA adapter, quantize it to 4-bit weights with GPTQ and AWQ
(llm-compressor, compressed-tensors format), reload each and measure MAP@25, size and speed.
Same as `eedi quantize`.

    python scripts/05_quantize.py --config configs/cpu.yaml [key=value ...]
"""
import sys

from eedi.cli import main

# The guard matters: with quantize.backend=vllm, vLLM spawns worker processes that re-import this file.
if __name__ == "__main__":
    sys.exit(main(["quantize", *sys.argv[1:]]))
