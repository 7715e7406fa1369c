"""Stages ``train-retriever`` and ``index``: the bi-encoder, fine-tuned per fold, then top-K candidates.

**train-retriever**: one model per fold, fine-tuned contrastively.

Model: a sentence-transformers pipeline ``Transformer -> Pooling -> Normalize`` over any
Hugging Face backbone (``retriever.backbone``: a hub id or a local folder).

* Causal LMs (Qwen2.5, SmolLM2, ...) use **last-token pooling**. The tokenizer appends the EOS
  token to every text (its post-processor, so truncation keeps room for it and the setting is
  saved with the model); the pooled vector is the EOS token's hidden state, found from the
  attention mask, so left and right padding give the same vector. Queries get the task
  instruction (``Instruct: ...\\nQuery: ``) as the model's saved ``query`` prompt;
  misconception texts get none.
* Encoders (MiniLM, BERT ...) use mean pooling and no instruction, as they were pre-trained.
* LoRA through peft (``model.add_adapter``), or full fine-tuning (``retriever.lora.enabled=false``).
  On CUDA: bf16, SDPA / flash attention (:mod:`eedi.runtime`), gradient checkpointing and
  optional 4-bit NF4 loading (QLoRA).

Training: sentence-transformers' ``SentenceTransformerTrainer`` with the loss and batches of
:mod:`eedi.retrieval.negatives` and :mod:`eedi.retrieval.loss` (in-batch + hard + random negatives,
documents deduplicated per batch,
length-sorted chunks, optional GradCache); hard negatives are mined online from each step's
own query embeddings. DDP comes from the Trainer: ``eedi run`` launches the stage under torchrun when
``runtime.nproc_per_node`` > 1 (docs/distributed.md).

Outputs per fold, in ``run_dir/retriever/fold_{k}/`` (``full/`` for ``folds.full_fit``):

* ``model/`` - the merged model, loadable with ``SentenceTransformer(path)``;
* ``adapter/`` - the LoRA adapter (peft format), when LoRA is on;
* ``train_log.jsonl`` - one line per evaluation: epoch, step, mean training loss, validation
  MAP@25 / recall@25 (epoch 0 = the starting model, zero-shot; not with ``retriever.validate_epochs=false``),
  seconds spent;
* ``checkpoints/`` - Trainer checkpoints while training (resume after a crash); removed at the end.

**index**: FAISS index over the misconceptions, top-K candidates for every pair.

For each fold k in ``folds.use`` the fold's retriever (``retriever/fold_k/model``) embeds
all misconceptions into a FAISS inner-product index (embeddings are L2-normalised, so inner
product = cosine) and retrieves the top ``index.top_k`` for every labelled training pair.

Outputs (under ``run_dir``; schemas in docs/stages.md):

* ``index/fold_{k}.faiss`` + ``index/fold_{k}.ids.npy`` - the index and its row -> MisconceptionId map.
* ``index/fold_{k}.embeddings.npz`` - what the model embedded (misconceptions, queries), keyed by its training
  fingerprint: ``eedi serve`` loads it instead of embedding them again.
* ``candidates/fold_{k}.parquet`` - ``QuestionId_Answer, rank (0-based), MisconceptionId, score, fold,
  part``: part = ``val`` for fold k's own pairs (out-of-fold: the model never trained on them) and
  ``train`` for the pairs it trained on (the reranker trains on those).
* ``candidates/test.parquet`` (when pairs.parquet has test pairs) - same columns, fold = -1,
  part = ``test``: from the full-fit model (``retriever/full``) when it exists, else from the mean
  of the fold models' scores, each with the label memory over every labelled pair (an ensemble that needs no
  extra training run).
* ``metrics.json`` gains ``fold_{k}.retriever`` = :func:`eedi.evaluation.metrics.ranking_metrics` on the
  val part, split by whether the misconception occurs in fold k's training part.
"""

from __future__ import annotations

from eedi.config import Config
from eedi.data.artifacts import load_folds, load_misconceptions, load_pairs
from eedi.layout import model_name
from eedi.retrieval.indexing import TEST_UNSEEN_BOOST, index_fold, test_candidates
from eedi.retrieval.model import backbone_config
from eedi.retrieval.train import train_fold


def train(config: Config) -> dict:
    """One retriever per fold in ``folds.use`` (+ the full fit when ``folds.full_fit``)."""
    backbone_config(config.retriever.backbone)  # fail on a bad backbone before any work
    targets: list[int | None] = list(config.folds.use) + ([None] if config.folds.full_fit else [])
    return {model_name(fold): train_fold(config, fold) for fold in targets}


def index(config: Config) -> dict:
    """Index and candidates for every fold in ``folds.use`` (+ the test pairs). Returns per-fold metrics."""
    pairs = load_pairs(config.run_dir)
    folds, misconceptions = load_folds(config.run_dir), load_misconceptions(config.run_dir)
    summary: dict = {}
    for fold in config.folds.use:
        metrics = index_fold(config, fold, pairs, folds, misconceptions)
        summary[model_name(fold)] = {k: metrics[k] for k in ("map@25_mix", "map@25", "recall@25", "n") if k in metrics}
    test = pairs[pairs["split"] == "test"]
    if len(test):
        labelled = pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]
        summary["test_candidates"], summary[TEST_UNSEEN_BOOST] = test_candidates(config, test, misconceptions, labelled)
    return summary
