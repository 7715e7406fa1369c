"""InfoNCE over in-batch, hard and random negatives, with optional GradCache
(sentence-transformers' CachedLossMixin).

Under DDP (several training processes) every rank scores its own queries against the documents of *all*
ranks (gathered, duplicates across ranks counted once), so N ranks of batch b train exactly as one process
with the global batch N x b would (tests/test_distributed.py). Every rank issues the same collectives per
step whatever its number of documents or mini-batches: three all-gathers and one all-reduce for the
documents and DDP's one gradient all-reduce (sentence-transformers' GradCache replays every mini-batch but
the last under ``no_sync``; DDP broadcasts no buffers, see ``DDP_KWARGS`` in retrieval/train.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import Tensor, nn

from eedi.retrieval.negatives import NegativeSampler, document_set


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)  # DistributedDataParallel


class Targets(NamedTuple):
    """What ``calculate_loss`` needs besides the embeddings: each query's positive column among this rank's
    documents, and the documents' MisconceptionIds (to merge the ranks' document lists)."""

    positions: Tensor
    doc_ids: Tensor


def _world_size() -> int:
    """Processes in the default group: the one accelerate (the Trainer's PartialState) set up; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_padded(x: Tensor) -> tuple[list[Tensor], list[int]]:
    """Every rank's ``x`` (rank order), whose first dimension may differ between ranks."""
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return [part[:n] for part, n in zip(parts, counts)], counts


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order. Backward: every rank's loss reads every row, so a row's
    gradient is the sum over the ranks (an all-reduce), of which each rank keeps its own rows'."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts, counts = _gather_padded(x.detach())
        ctx.rank, ctx.counts = dist.get_rank(), counts
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def global_documents(documents: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
    """All ranks' documents, the mask of the columns to score (the first copy of each id) and each local
    query's positive column among them."""
    doc_ids = torch.cat(_gather_padded(targets.doc_ids.to(documents.device))[0]).tolist()
    first: dict[int, int] = {}
    for column, doc_id in enumerate(doc_ids):
        first.setdefault(doc_id, column)
    keep = torch.tensor([first[d] == c for c, d in enumerate(doc_ids)], device=documents.device)
    local_ids = targets.doc_ids.tolist()
    positions = torch.tensor(
        [first[local_ids[p]] for p in targets.positions.tolist()], dtype=torch.long, device=documents.device
    )
    return _GatherRows.apply(documents), keep, positions


class HardNegativeInfoNCE(CachedLossMixin, nn.Module):
    """InfoNCE of each query against one shared, deduplicated set of documents, with online hard negatives.

    ``sentence_features`` = [queries]; ``labels`` = (batch, 1 + n_random) ids from the collator.
    Loss = mean_i CE(scale * cos(q_i, D), positive_i), D = the batch's positives + random + hard negatives.
    """

    def __init__(
        self,
        model: nn.Module,
        corpus_ids: Sequence[int],
        corpus_texts: Sequence[str],
        sampler: NegativeSampler,
        scale: float,
        refresh_steps: int,
        mini_batch_size: int = 16,
        gradient_cache: bool = False,
        encode_batch_size: int = 64,
        frozen_documents: bool = False,
    ):
        super().__init__()
        self.model = model
        self.texts = dict(zip((int(i) for i in corpus_ids), corpus_texts))
        self.corpus_ids = list(self.texts)
        self.row = {doc_id: i for i, doc_id in enumerate(self.corpus_ids)}
        # frozen: the misconceptions keep the embeddings of the model as it starts (the backbone); the first
        # cache is never refreshed and gives the loss its documents as constants
        self.frozen_documents = frozen_documents
        self.sampler, self.scale, self.refresh_steps = sampler, float(scale), refresh_steps
        # Without GradCache the texts are still embedded in chunks (with gradients, all kept for one
        # backward): trailing padding is trimmed per chunk, which saves compute on length-sorted input.
        self.mini_batch_size = mini_batch_size
        # Read by sentence-transformers' wrappers (Matryoshka etc.) too.
        self.uses_gradient_cache = gradient_cache
        self.encode_batch_size = encode_batch_size
        self.global_step = 0
        """The Trainer's optimizer step, set by it before every step (``RetrieverTrainer.compute_loss``): the
        cache refreshes on multiples of refresh_steps."""
        self.refresh_seconds = 0.0
        self._cache: Tensor | None = None
        self._cache_step: int | None = None
        if frozen_documents:  # now, before the Trainer trains or loads a checkpoint: the backbone's embeddings
            self.refresh_corpus()

    # ----------------------------------------------------------------- mining

    def refresh_corpus(self) -> None:
        """Re-embed every misconception with the current weights (no gradients, dropout off)."""
        t0 = time.perf_counter()
        module = _unwrap(self.model)
        training = module.training
        embeddings = module.encode_document(
            [self.texts[i] for i in self.corpus_ids],
            batch_size=self.encode_batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        module.train(training)
        self._cache, self._cache_step = embeddings.float(), self.global_step
        self.refresh_seconds += time.perf_counter() - t0

    def frozen_corpus(self) -> np.ndarray | None:
        """(corpus, dim) the misconceptions' fixed embeddings, in ``corpus_ids`` order; None unless frozen."""
        return self._cache.cpu().numpy() if self.frozen_documents else None

    def _corpus_cache(self) -> Tensor:
        due = (
            not self.frozen_documents
            and self.global_step % self.refresh_steps == 0
            and self.global_step != self._cache_step
        )
        if self._cache is None or due:
            self.refresh_corpus()
        return self._cache

    def _document_ids(self, query_reps: Tensor, features: dict[str, Tensor], labels: Tensor) -> tuple[list, list]:
        """Mine hard negatives for these query embeddings: the batch's unique document ids and each query's
        target position among them."""
        labels = labels.cpu().numpy()
        positives = labels[:, 0].tolist()
        negatives = list(labels[:, 1:])
        if self.sampler.n_hard:
            cache = self._corpus_cache().to(query_reps.device)
            scores = (F.normalize(query_reps.detach().float(), dim=-1) @ cache.T).cpu().numpy()
            content = features["input_ids"].cpu().numpy().tobytes()
            negatives = [
                np.concatenate([r, h]) for r, h in zip(negatives, self.sampler.hard(scores, positives, content))
            ]
        return document_set(positives, negatives)

    def _documents(
        self, query_reps: Tensor, features: dict[str, Tensor], labels: Tensor
    ) -> tuple[dict[str, Any], Targets]:
        """Mine hard negatives for these query embeddings; tokenize the batch's unique documents.
        Returns the documents' features, each query's target column among them and their ids."""
        doc_ids, targets = self._document_ids(query_reps, features, labels)
        # Longest first, so that each embedding chunk pads only to its own longest text.
        order = sorted(range(len(doc_ids)), key=lambda i: -len(self.texts[doc_ids[i]]))
        position = {old: new for new, old in enumerate(order)}
        texts = [self.texts[doc_ids[i]] for i in order]
        device = query_reps.device
        doc_features = {
            k: v.to(device) if isinstance(v, Tensor) else v for k, v in _unwrap(self.model).preprocess(texts).items()
        }
        return doc_features, Targets(
            torch.tensor([position[t] for t in targets], dtype=torch.long, device=device),
            torch.tensor([doc_ids[i] for i in order], dtype=torch.long, device=device),
        )

    # ----------------------------------------------------------------- loss

    def _embed(self, features: dict[str, Tensor], with_grad: bool) -> list[Tensor]:
        return [reps for reps, _ in self.embed_minibatch_iter(features, with_grad=with_grad, copy_random_state=False)]

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Targets | None = None, *, with_backward: bool = False
    ) -> Tensor:
        queries = F.normalize(torch.cat(reps[0]).float(), dim=-1)
        documents = F.normalize(torch.cat(reps[1]).float(), dim=-1)
        if _world_size() > 1:
            documents, keep, positions = global_documents(documents, labels)
            logits = (queries @ documents.T * self.scale).masked_fill(~keep, float("-inf"))
        else:
            logits, positions = queries @ documents.T * self.scale, labels.positions
        # Each rank's mean over its own queries; DDP averages the ranks' gradients, which with the summed
        # document gradients above is the gradient of the mean over the global batch.
        loss = F.cross_entropy(logits, positions.to(queries.device))
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) != 1:
            raise ValueError(f"expected the query features only, got {len(sentence_features)} columns")
        queries = sentence_features[0]
        if self.frozen_documents:
            query_reps = self._embed(queries, with_grad=True)
            doc_ids, targets = self._document_ids(torch.cat(query_reps), queries, labels)
            cache = self._corpus_cache().to(query_reps[0].device)
            documents = cache[torch.tensor([self.row[d] for d in doc_ids], device=cache.device)]
            device = documents.device
            return self.calculate_loss(
                [query_reps, [documents]],
                Targets(torch.tensor(targets, device=device), torch.tensor(doc_ids, dtype=torch.long, device=device)),
            )
        if self.uses_gradient_cache:
            with torch.no_grad():
                query_reps = torch.cat(self._embed(queries, with_grad=False))
            documents, targets = self._documents(query_reps, queries, labels)
            return self.forward_cached([queries, documents], targets)
        query_reps = self._embed(queries, with_grad=True)
        documents, targets = self._documents(torch.cat(query_reps), queries, labels)
        return self.calculate_loss([query_reps, self._embed(documents, with_grad=True)], targets)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "n_hard": self.sampler.n_hard,
            "hard_ranks": list(self.sampler.hard_ranks),
            "n_random": self.sampler.n_random,
            "refresh_steps": self.refresh_steps,
            "mini_batch_size": self.mini_batch_size,
            "gradient_cache": self.uses_gradient_cache,
            "frozen_documents": self.frozen_documents,
        }
