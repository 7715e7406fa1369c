"""Negatives for the contrastive retriever loss: sampling, online hard-negative mining, batching.

Every training query sees, in one softmax, its positive misconception against

* the other queries' positives (in-batch negatives),
* ``n_random_negatives`` drawn uniformly from the whole misconception table,
* ``n_hard_negatives`` drawn from ranks ``hard_negative_ranks`` of the *current* model's
  ranking for that query (its positive excluded),

and every query's explicit negatives serve the whole batch too. Explicit negatives may be limited to a
``pool`` of the corpus (``retriever.negatives_from: training_labels``: the misconceptions that label a
training pair), so that misconceptions training never shows as a positive are never pushed away either.

Hard negatives are mined online, inside the loss (:class:`HardNegativeInfoNCE`): the query
embeddings of the training step itself are scored against a cache of the misconception
embeddings, which is re-embedded every ``hard_negative_refresh_steps`` optimizer steps. The
corpus is small (2,587 misconceptions in the competition), so the cache costs a fraction of a
step, and mining needs no separate pass over the training queries, which the usual
mine-then-train loop makes over all of them every time it refreshes.

The corpus is also closed, so a batch of 32 queries with 15 hard and 96 random negatives
each names the same misconception many times over. Each misconception of a batch is embedded
*once*: the batch becomes (queries, unique documents, index of each query's positive). That is
cheaper than one column per negative (the layout of sentence-transformers'
``MultipleNegativesRankingLoss``) and exact: a query's own positive appears once among the
documents, so another query that shares it, or names it as a negative, can never turn it
into a false negative. Deduplication makes ``BatchSamplers.NO_DUPLICATES`` unnecessary.

Padding is the other cost on a CPU: query lengths vary several-fold, and a random batch padded to
its longest spends much of its compute on padding. Queries and documents are therefore ordered by
length inside the batch and embedded in chunks of ``mini_batch_size``, each padded only to its own
longest text. (Batches *of* similar length would save more, but on Eedi-like data length follows
the question template: such batches hold one kind of question and their in-batch negatives lose the
variety the contrastive loss learns from.)

With ``gradient_cache`` the loss runs sentence-transformers' GradCache
(:class:`CachedLossMixin`) over those chunks: memory is bounded by one chunk of activations, so
the contrastive batch can be far larger than what fits at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from eedi.retrieval.search import top_k_from_scores

QUERY = "query"


class NegativeSampler:
    """Draws explicit negatives: random ones for the collator, hard ones from a score matrix.

    Draws are a pure function of (seed, epoch, the batch's content), so a resumed run and every
    DDP rank draw the same negatives for the same batch.
    """

    def __init__(
        self,
        corpus_ids: Sequence[int],
        n_hard: int,
        hard_ranks: tuple[int, int],
        n_random: int,
        seed: int = 0,
        pool: Sequence[int] | None = None,
    ):
        self.corpus_ids = np.asarray(corpus_ids, dtype=np.int64)
        if len(np.unique(self.corpus_ids)) != len(self.corpus_ids):
            raise ValueError("corpus ids must be unique")
        # Which corpus ids may be drawn as negatives (None: all of them).
        self.in_pool = np.ones(len(self.corpus_ids), bool) if pool is None else np.isin(self.corpus_ids, pool)
        if not self.in_pool.any():
            raise ValueError("the negatives' pool holds no corpus id")
        self.n_hard, self.hard_ranks, self.n_random, self.seed = n_hard, tuple(hard_ranks), n_random, seed
        self.epoch = 0

    def rng(self, content: bytes, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, zlib.crc32(content), stream])

    def random(self, queries: Sequence[str], positives: Sequence[int]) -> list[np.ndarray]:
        """``n_random`` corpus ids per query, never its positive."""
        if not self.n_random:
            return [np.empty(0, dtype=np.int64) for _ in positives]
        rng = self.rng("\x1f".join(queries).encode("utf-8"), stream=0)
        out = []
        for positive in positives:
            pool = self.corpus_ids[self.in_pool & (self.corpus_ids != positive)]
            out.append(rng.choice(pool, size=min(self.n_random, len(pool)), replace=False))
        return out

    def hard(self, scores: np.ndarray, positives: Sequence[int], content: bytes) -> list[np.ndarray]:
        """``n_hard`` ids per query from ranks [start, stop) of its row of ``scores`` (corpus order),
        ranks counted after removing the positive and the ids outside the pool."""
        if not self.n_hard:
            return [np.empty(0, dtype=np.int64) for _ in positives]
        rng = self.rng(content, stream=1)
        start, stop = self.hard_ranks
        if not self.in_pool.all():
            scores = np.where(self.in_pool, scores, -np.inf)
        _, ranked = top_k_from_scores(scores, self.corpus_ids, stop + 1)  # + 1: room for the positive
        allowed = self.corpus_ids[self.in_pool]  # a pool smaller than stop + 1 leaves masked ids in the top
        out = []
        for row, positive in zip(ranked, positives):
            ranked = row[(row != positive) & np.isin(row, allowed)][start:stop]
            out.append(
                rng.choice(ranked, size=min(self.n_hard, len(ranked)), replace=False)
                if len(ranked)
                else np.empty(0, dtype=np.int64)
            )
        return out


def document_set(positives: Sequence[int], negatives: Iterable[np.ndarray]) -> tuple[list[int], list[int]]:
    """Unique documents of a batch (positives first) and the index of each query's positive among them."""
    order: dict[int, int] = {}
    for mid in list(positives) + [int(x) for neg in negatives for x in neg]:
        order.setdefault(int(mid), len(order))
    return list(order), [order[int(p)] for p in positives]


@dataclass
class ContrastiveCollator(SentenceTransformerDataCollator):
    """Rows ``{"query": text, "label": positive MisconceptionId}`` -> tokenized queries and
    ``label`` = (batch, 1 + n_random) ids: each query's positive, then its random negatives."""

    sampler: NegativeSampler = None  # type: ignore[assignment]  (dataclass fields after defaults need one)
    query_prompt: str | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        # Longest first, so that each embedding chunk pads only to its own longest text.
        features = sorted(features, key=lambda row: -len(row[QUERY]))
        queries = [row[QUERY] for row in features]
        positives = [int(row["label"]) for row in features]
        randoms = np.stack(self.sampler.random(queries, positives))
        ids = np.column_stack([np.asarray(positives, dtype=np.int64), randoms])
        batch: dict[str, Any] = {"label": torch.from_numpy(ids)}
        for key, value in self.preprocess_fn(queries, prompt=self.query_prompt).items():
            batch[f"{QUERY}_{key}"] = value
        return batch
