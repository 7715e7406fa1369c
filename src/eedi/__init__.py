"""Eedi – Mining Misconceptions in Mathematics: a retrieve + rerank pipeline.

Read the code top to bottom in pipeline order: data (prepare) -> synthesis ->
retriever -> index -> reranker -> quantize -> evaluate/infer.
"""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on import, on CPUs with AVX-512 BF16, that an optional CPU kernel package is missing.
# 4-bit loading (QLoRA) is CUDA-only here, so on every command that line is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
