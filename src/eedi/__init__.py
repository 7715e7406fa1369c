"""Eedi – Mining Misconceptions in Mathematics: a retrieve + rerank pipeline.

Read the code top to bottom in pipeline order: data (prepare) -> synthesis ->
retriever -> index -> reranker -> quantize -> evaluate/infer.
"""

__version__ = "0.1.0"
