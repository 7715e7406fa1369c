"""One rank of tests/test_distributed.py's GradCache check (run under torchrun with 2 CPU processes).

    torchrun --nproc_per_node 2 tests/ddp_gradcache_worker.py TINY_QWEN2_DIR OUT_DIR [gradient_cache]

Each rank takes its half of the global batch (:func:`global_batch`), runs the retriever's loss through the
DDP-wrapped model for two steps and saves the second step's gradients to OUT_DIR/rank{r}.pt.
"""

from __future__ import annotations

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from eedi.config import RetrieverConfig, RuntimeConfig
from eedi.retrieval.loss import HardNegativeInfoNCE
from eedi.retrieval.model import build_model
from eedi.retrieval.negatives import ContrastiveCollator, NegativeSampler
from eedi.retrieval.train import DDP_KWARGS
from eedi.runtime import processes, resolve

CORPUS_IDS = list(range(10, 24))
CORPUS_TEXTS = [
    f"misconception number {i} about {'fractions' if i % 2 else 'angles in a triangle'}" for i in CORPUS_IDS
]
QUERIES = [
    "angles in a triangle",
    "what is 1/2 + 1/3",
    "round 3.5 to the nearest whole number",
    "7 x 8",
    "simplify 4/8",
    "the exterior angle of a regular hexagon",
    "3 - -2",
    "10% of 50",
]
POSITIVES = [10, 10, 15, 11, 12, 13, 20, 21]


def negatives(positive: int, rank_half: int) -> list[int]:
    """The first half's queries draw many distinct negatives, the second half's few: the ranks embed different
    numbers of documents, hence of GradCache mini-batches."""
    if rank_half == 0:
        return [10 + (positive - 10 + k) % 14 for k in (1, 2, 3, 4)]
    return [22, 23, 22, 23]


def global_batch(rows: range):
    return [(QUERIES[i], POSITIVES[i], negatives(POSITIVES[i], i // 4)) for i in rows]


def model_and_loss(backbone: str, placement, gradient_cache: bool):
    cfg = RetrieverConfig(backbone=backbone, lora={"enabled": False}, query_instruction="")
    torch.manual_seed(0)
    model = build_model(cfg, placement)  # the tiny Qwen2 has no dropout: embeddings are deterministic
    sampler = NegativeSampler(CORPUS_IDS, n_hard=0, hard_ranks=(0, 4), n_random=0, seed=1)
    loss = HardNegativeInfoNCE(
        model,
        CORPUS_IDS,
        CORPUS_TEXTS,
        sampler,
        scale=20.0,
        refresh_steps=10,
        mini_batch_size=2,
        gradient_cache=gradient_cache,
    )
    return model, loss, sampler


def batch(model, sampler, rows):
    features = ContrastiveCollator(preprocess_fn=model.preprocess, sampler=sampler)(
        [{"query": q, "label": p} for q, p, _ in rows]
    )
    by_positive = {p: n for _, p, n in rows}
    labels = torch.tensor([[int(p), *by_positive[int(p)]] for p in features["label"][:, 0]])
    return {k[len("query_") :]: v for k, v in features.items() if k.startswith("query_")}, labels


def gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main(backbone: str, out: str, gradient_cache: bool) -> None:
    procs = processes(resolve(RuntimeConfig(device="cpu", dtype="float32")), timeout_s=60)
    model, loss, sampler = model_and_loss(backbone, procs.placement, gradient_cache)
    model.train()
    loss.model = DistributedDataParallel(model, **DDP_KWARGS)  # as the Trainer wraps it
    features, labels = batch(model, sampler, global_batch(range(4 * procs.rank, 4 * procs.rank + 4)))
    for _ in range(2):
        model.zero_grad()
        value = loss([features], labels)
        value.backward()
    torch.save({"loss": value.detach(), "grads": gradients(model)}, f"{out}/rank{procs.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "true" if len(sys.argv) > 3 else True)
