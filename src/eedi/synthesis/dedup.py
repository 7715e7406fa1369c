"""Exact and near-duplicate detection of generated questions against real and earlier synthetic rows."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import numpy as np
from sentence_transformers import SentenceTransformer
from sklearn.feature_extraction.text import TfidfVectorizer

from eedi.config import Config
from eedi.progress import library_bars_on_console
from eedi.runtime import resolve
from eedi.synthesis.engine import check_model_source
from eedi.synthesis.parse import _norm

# --------------------------------------------------------------------------- de-duplication


def dedup_text(question: str, wrong_answer: str) -> str:
    """What makes a training pair: the question and the distractor the misconception explains."""
    return f"{question}\n{wrong_answer}"


class Embedder(Protocol):
    def encode(self, texts: list[str]):
        """L2-normalised rows (numpy or scipy sparse), one per text."""


class SentenceEmbedder:
    def __init__(self, path: str, device: str, batch_size: int = 64):
        self.model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        with library_bars_on_console():
            return self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=len(texts) >= 512,
            )


class TfidfEmbedder:
    """Character n-gram TF-IDF: no model needed; catches copies with small edits (numbers, wording)."""

    def __init__(self, corpus: list[str]):
        # char_wb n-grams keep short maths tokens ("4n", "\frac") that a word tokenizer drops.
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        self.vectorizer.fit(corpus)

    def encode(self, texts: list[str]):
        return self.vectorizer.transform(list(texts))


def cosine(a, b) -> np.ndarray:
    sims = a @ b.T
    return sims.toarray() if hasattr(sims, "toarray") else np.asarray(sims)


class Deduplicator:
    """Exact (normalised text) and near (cosine) duplicate filter over a growing reference set."""

    def __init__(self, embedder: Embedder, threshold: float):
        self.embedder = embedder
        self.threshold = threshold
        self.keys: set[str] = set()
        self.blocks: list = []

    def add(self, texts: list[str]) -> None:
        if not texts:
            return
        self.keys.update(_norm(t) for t in texts)
        self.blocks.append(self.embedder.encode(texts))

    def select(self, texts: list[str], groups: list[int] | None = None, cap: int | None = None) -> list[str | None]:
        """Greedy in the given order: a reason per text, None for those selected (added to the reference).

        With ``groups`` and ``cap``, at most ``cap`` texts per group are selected; the rest are
        "over_per_target" and, not being selected, don't block later near duplicates.
        """
        if not texts:
            return []
        vectors = self.embedder.encode(texts)
        best = np.full(len(texts), -np.inf)
        for block in self.blocks:
            best = np.maximum(best, cosine(vectors, block).max(axis=1))
        within = cosine(vectors, vectors)
        reasons: list[str | None] = []
        kept: list[int] = []
        kept_keys: set[str] = set()
        taken: Counter = Counter()
        for i, text in enumerate(texts):
            key = _norm(text)
            score = max(best[i], within[i, kept].max() if kept else -np.inf)
            if key in self.keys or key in kept_keys:
                reasons.append("exact_duplicate")
            elif score >= self.threshold:
                reasons.append("near_duplicate")
            elif groups is not None and cap is not None and taken[groups[i]] >= cap:
                reasons.append("over_per_target")
            else:
                reasons.append(None)
                kept.append(i)
                kept_keys.add(key)
                if groups is not None:
                    taken[groups[i]] += 1
        self.keys.update(kept_keys)
        if kept:
            self.blocks.append(vectors[np.asarray(kept)])  # numpy or sparse rows
        return reasons


def load_embedder(config: Config, corpus: list[str]) -> Embedder:
    name = config.synthetic.embedder
    if name == "tfidf":
        return TfidfEmbedder(corpus)

    return SentenceEmbedder(check_model_source(name, "synthetic.embedder"), resolve(config.runtime).device)
