"""The one validated config that drives every stage.

A run is described by a single YAML file (``configs/*.yaml``) plus ``key=value``
overrides from the command line. Everything is validated by pydantic at load time:
an unknown key, a wrong type or a missing path fails before any work starts, with
one error naming the key.

Each stage reads only its own section (``data``, ``folds``, ``retriever`` …); the
resolved config is written into the run manifest so a run can be reproduced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eedi.errors import ConfigError


class Section(BaseModel):
    # extra="forbid": a typo in a key is an error, never silently ignored.
    # use_attribute_docstrings: the docstring under each key is its description (docs/config.md).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), use_attribute_docstrings=True
    )


# --------------------------------------------------------------------------- what each key affects
#
# Every key declares, beside its definition, which stages' outputs it changes: ``Field(...,
# json_schema_extra=affects("index"))``. That one declaration is all that decides reuse: a stage's
# fingerprint is the values of the keys that name it (plus its upstream stages' fingerprints), and a
# trained model's fingerprint is the values of the keys that name its stage with ``trains=True`` (plus
# the files it was trained on). A key that names a model stage without ``trains`` changes only how the
# trained model is used there (the validation reranking, say): the stage re-runs and reuses its models.
# Stages downstream of a changed one re-run through their upstream fingerprints; a key names only the
# stages that read it.

MODEL_STAGES = ("train-retriever", "train-reranker")
"""Stages that train models (one per fold): the stages ``trains=True`` refers to."""


def affects(*stages: str, trains: bool = False) -> dict:
    """A key's declaration (its ``json_schema_extra``): the stages that read it, and for the model stages among
    them whether it changes what is trained (``trains=True``) or only how the model is used. ``affects()``: it
    changes no output (where files go, thread counts, logging)."""
    return {"affects": {"stages": list(stages), "trains": trains}}


AS_SECTION = {"affects": "section"}
"""A key of a section reused under several keys (``lora``): it affects what the key holding the section does."""
TRAINS_RETRIEVER = affects("train-retriever", trains=True)
TRAINS_RERANKER = affects("train-reranker", trains=True)
RERANKING = affects("train-reranker", "quantize", "infer")
"""How a trained reranker scores: the validation reranking, the quantized models' measurement and infer."""
SYNTHESIS = affects("synthesize")
QUANTIZATION = affects("quantize")
ON_DEVICE = affects("synthesize", "train-retriever", "index", "train-reranker", "quantize", "infer", trains=True)


DEFAULT_QUERY_TEMPLATE = (
    "Construct: {ConstructName}\n"
    "Subject: {SubjectName}\n"
    "Question: {QuestionText}\n"
    "Correct answer: {CorrectAnswerText}\n"
    "Incorrect answer: {WrongAnswerText}"
)


class DataConfig(Section):
    dir: Path = Field(Path("data/sample"), json_schema_extra=affects("prepare", "infer"))
    """Folder with the Kaggle CSVs: train.csv, misconception_mapping.csv, optionally test.csv and
    sample_submission.csv."""
    query_template: str = Field(DEFAULT_QUERY_TEMPLATE, json_schema_extra=affects("prepare", "synthesize"))
    """Python format string for the query text; fields are the pairs.parquet columns."""

    @field_validator("query_template")
    @classmethod
    def _template_fields_exist(cls, template: str) -> str:
        allowed = {
            "QuestionId",
            "ConstructId",
            "ConstructName",
            "SubjectId",
            "SubjectName",
            "QuestionText",
            "CorrectAnswer",
            "CorrectAnswerText",
            "WrongAnswer",
            "WrongAnswerText",
        }
        used = {name for _, name, _, _ in Formatter().parse(template) if name}
        unknown = sorted(used - allowed)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in query_template; allowed: {sorted(allowed)}")
        return template


class FoldsConfig(Section):
    """Cross-validation folds of the training questions (scikit-learn GroupKFold)."""

    n_splits: int = Field(5, ge=2, json_schema_extra=affects("prepare"))
    """Number of folds."""
    seed: int = Field(42, json_schema_extra=affects("prepare"))
    """Shuffle seed of the groups: same seed, same folds."""
    mode: Literal["group", "unseen"] = Field("group", json_schema_extra=affects("prepare"))
    """group: GroupKFold by QuestionId over shuffled groups. unseen: additionally holds out whole
    misconceptions per fold, so validation is rich in misconceptions never seen in training (like the test set)."""
    unseen_share: float = Field(0.3, ge=0.0, le=1.0, json_schema_extra=affects("prepare"))
    """mode=unseen: share of each fold's misconceptions held out of that fold's training part."""
    use: list[int] = Field(
        default_factory=lambda: [0],
        json_schema_extra=affects("train-retriever", "index", "train-reranker", "quantize", "evaluate", "infer"),
    )
    """Folds to train and evaluate on."""
    full_fit: bool = Field(
        False, json_schema_extra=affects("train-retriever", "index", "train-reranker", "quantize", "infer")
    )
    """Also train one model on all labelled rows (for the submission)."""

    @model_validator(mode="after")
    def _use_in_range(self) -> FoldsConfig:
        bad = [f for f in self.use if not 0 <= f < self.n_splits]
        if bad:
            raise ValueError(f"use={self.use}: fold(s) {bad} outside 0..{self.n_splits - 1}")
        return self


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=ON_DEVICE)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", json_schema_extra=ON_DEVICE)
    """auto: bfloat16 on CUDA, float32 on CPU (bf16 is several times slower on CPUs without AVX-512)."""
    num_threads: int | None = Field(None, json_schema_extra=affects())
    """torch CPU threads; None leaves torch's default."""
    vllm_cpu_threads: int | None = Field(None, ge=1, json_schema_extra=affects())
    """OpenMP threads of vLLM's CPU engine (reranker scoring, synthesize): None = every core of this
    process's affinity mask (``os.sched_getaffinity(0)``); n = the first n of them. vLLM's own default
    keeps one core back for its scheduler, which on a 2-core machine leaves one compute thread. A
    VLLM_CPU_OMP_THREADS_BIND or VLLM_CPU_NUM_OF_RESERVED_CPU set in the environment wins; no effect on CUDA."""
    nproc_per_node: int | None = Field(
        None, ge=1, json_schema_extra=affects("train-retriever", "train-reranker", trains=True)
    )
    """Processes per machine for the training stages (train-retriever, train-reranker): above 1, `eedi run`
    starts each of them under torchrun (DDP, one process per GPU; gloo on CPU). None: every visible GPU (1 on a
    CPU). Multi-node runs launch torchrun by hand (docs/distributed.md)."""
    ddp_timeout: int = Field(7200, ge=60, json_schema_extra=affects())
    """Seconds a training process waits in a collective before it fails (the Trainer's ddp_timeout). Rank 0
    evaluates and merges while the others wait, so it must cover the longest of those."""


class InferConfig(Section):
    """Stage ``infer``: rerank the test pairs' candidates and write submission.csv."""

    reranker_model: Literal["auto", "merged", "gptq", "awq"] = Field("auto", json_schema_extra=affects("infer"))
    """Which reranker weights to serve: auto = the first quantized one that exists (gptq, then awq)
    when the backend can run it, else the merged full-precision model."""
    backend: Literal["transformers", "vllm"] = Field("vllm", json_schema_extra=affects("infer"))
    """vllm on CUDA (and on CPU for full-precision models); transformers anywhere."""
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, json_schema_extra=affects())
    """Share of each GPU's memory the vLLM reranker engine may take (weights + KV cache): infer, the Kaggle
    notebook and reranker.backend=vllm scoring. vLLM refuses to start when less than this share is free, so
    lower it when something else holds GPU memory (synthesis has its own, synthetic.engine.gpu_memory_utilization)."""


DEFAULT_RETRIEVAL_INSTRUCTION = (
    "Given a math problem statement and an incorrect answer as a query, retrieve relevant passages "
    "that identify and explain the nature of the error."
)


class LoraSection(Section):
    enabled: bool = Field(True, json_schema_extra=AS_SECTION)
    """LoRA adapters on the backbone; false: full fine-tuning (sensible for small encoders only)."""
    r: int = Field(32, ge=1, json_schema_extra=AS_SECTION)
    """LoRA rank."""
    alpha: int = Field(64, ge=1, json_schema_extra=AS_SECTION)
    """LoRA alpha (scaling = alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0, json_schema_extra=AS_SECTION)
    """Dropout on the LoRA branch."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        json_schema_extra=AS_SECTION,
    )
    """Module names that get adapters (Qwen2/Llama names by default)."""


class RetrieverConfig(Section):
    """Stage ``train-retriever``: contrastive fine-tuning of the bi-encoder, one model per fold."""

    backbone: str = Field("models/all-minilm-l6-v2", json_schema_extra=TRAINS_RETRIEVER)
    """Hugging Face model id or local folder (an encoder such as MiniLM or a causal LM such as Qwen2.5)."""
    pooling: Literal["auto", "lasttoken", "mean"] = Field("auto", json_schema_extra=TRAINS_RETRIEVER)
    """auto: last-token pooling for causal LMs (an EOS token is appended to every text), mean for encoders."""
    query_instruction: str = Field(DEFAULT_RETRIEVAL_INSTRUCTION, json_schema_extra=TRAINS_RETRIEVER)
    """Task instruction prefixed to queries of last-token (causal LM) backbones as
    'Instruct: ...\\nQuery: '; misconception texts get no prefix. Encoders are used as pre-trained, without it."""
    max_length: int = Field(256, ge=8, json_schema_extra=TRAINS_RETRIEVER)
    """Token limit for queries and misconception texts."""
    load_in_4bit: bool = Field(False, json_schema_extra=TRAINS_RETRIEVER)
    """QLoRA: load the backbone in bitsandbytes NF4 (CUDA only); the merged model is rebuilt in runtime.dtype.
    The Kaggle notebook's predict path then loads that merged retriever in NF4 again (16 GB T4s)."""
    lora: LoraSection = Field(default_factory=LoraSection, json_schema_extra=TRAINS_RETRIEVER)
    top_layers: int | None = Field(None, ge=1, json_schema_extra=TRAINS_RETRIEVER)
    """Train only the top this-many transformer layers (their LoRA adapters, or their weights when LoRA is off);
    embeddings and lower layers stay frozen, so backpropagation stops below them. None: all layers."""
    epochs: int = Field(1, ge=1, json_schema_extra=TRAINS_RETRIEVER)
    """Passes over the fold's training pairs."""
    max_steps: int | None = Field(None, ge=1, json_schema_extra=TRAINS_RETRIEVER)
    """Stop after this many optimizer steps (smoke tests); None: run all epochs."""
    batch_size: int = Field(32, ge=2, json_schema_extra=TRAINS_RETRIEVER)
    """Queries per device and step; every other query's positive and negatives are in-batch negatives."""
    mini_batch_size: int = Field(16, ge=1, json_schema_extra=TRAINS_RETRIEVER)
    """Texts are embedded in length-sorted chunks of this many (each chunk padded to its own longest text)."""
    gradient_cache: bool = Field(False, json_schema_extra=TRAINS_RETRIEVER)
    """GradCache over those chunks: activation memory of one chunk, whatever batch_size (a second, gradient-free
    forward pass is the price). Off: all chunks keep their activations for one backward pass."""
    grad_accum: int = Field(1, ge=1, json_schema_extra=TRAINS_RETRIEVER)
    """Gradient accumulation steps (the contrastive batch stays batch_size; updates average over them)."""
    lr: float = Field(1e-4, gt=0, json_schema_extra=TRAINS_RETRIEVER)
    """Peak learning rate (linear decay after warm-up)."""
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0, json_schema_extra=TRAINS_RETRIEVER)
    """Share of the steps spent warming the learning rate up."""
    gradient_checkpointing: bool = Field(False, json_schema_extra=TRAINS_RETRIEVER)
    """Recompute activations in the backward pass (large backbones on CUDA)."""
    temperature: float = Field(0.01, gt=0, json_schema_extra=TRAINS_RETRIEVER)
    """Softmax temperature of the InfoNCE loss (scale = 1 / temperature)."""
    n_hard_negatives: int = Field(15, ge=0, json_schema_extra=TRAINS_RETRIEVER)
    """Hard negatives per query, sampled from the mined ranks below (the positive excluded)."""
    hard_negative_ranks: tuple[int, int] = Field((0, 25), json_schema_extra=TRAINS_RETRIEVER)
    """[start, stop) ranks of the current model's retrieval list that hard negatives are drawn from."""
    n_random_negatives: int = Field(96, ge=0, json_schema_extra=TRAINS_RETRIEVER)
    """Random misconceptions (not the positive) added per query."""
    negatives_from: Literal["corpus", "training_labels"] = Field("corpus", json_schema_extra=TRAINS_RETRIEVER)
    """Where hard and random negatives are drawn from. corpus: every misconception. training_labels: only the
    misconceptions that label one of the fold's training pairs, so that the ones training never shows (most of
    the competition's test) are never pushed away from queries; 7th place dropped those negatives."""
    document_tower: Literal["trained", "frozen"] = Field("trained", json_schema_extra=TRAINS_RETRIEVER)
    """trained: queries and misconceptions go through the one fine-tuned model. frozen: only the query side
    trains; misconceptions keep the backbone's embeddings, seen and unseen alike (locked-tower tuning), so
    training cannot move the misconceptions it shows away from the ones it never shows."""
    hard_negative_refresh_steps: int = Field(50, ge=1, json_schema_extra=TRAINS_RETRIEVER)
    """Hard negatives are mined online from the training step's own query embeddings against cached
    misconception embeddings; the cache is re-embedded with the current weights every this many steps."""
    validate_epochs: bool = Field(True, json_schema_extra=affects())
    """Score the fold's validation pairs before training and after every epoch (train_log.jsonl's MAP@25 curve).
    False: the index stage's validation metrics are the fold's only ones, and training skips an encoding of the
    misconceptions and the validation queries per epoch."""
    encode_batch_size: int = Field(64, ge=1, json_schema_extra=affects("train-retriever", "index", trains=True))
    """Batch size for embedding texts (mining, validation, index)."""
    save_steps: int = Field(200, ge=1, json_schema_extra=affects())
    """Write a resumable Trainer checkpoint every this many steps (the fold dir's checkpoints/). A multiple of
    hard_negative_refresh_steps, so that a resumed run mines exactly what an uninterrupted one would."""

    @model_validator(mode="after")
    def _resume_is_exact(self) -> RetrieverConfig:
        if self.save_steps % self.hard_negative_refresh_steps:
            raise ValueError(
                f"save_steps={self.save_steps} must be a multiple of hard_negative_refresh_steps="
                f"{self.hard_negative_refresh_steps}"
            )
        if self.document_tower == "frozen" and self.gradient_cache:
            raise ValueError(
                "document_tower=frozen trains without GradCache (the misconceptions are constants, only the queries "
                "carry gradients): set retriever.gradient_cache=false"
            )
        return self

    @field_validator("hard_negative_ranks")
    @classmethod
    def _ranks_ordered(cls, ranks: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= ranks[0] < ranks[1]:
            raise ValueError(f"need 0 <= start < stop, got {list(ranks)}")
        return ranks


class IndexConfig(Section):
    """Stage ``index``: FAISS index over the misconceptions and top-K candidates per pair."""

    top_k: int = Field(100, ge=1, json_schema_extra=affects("index"))
    """Candidates kept per (question, wrong answer) pair: the reranker's input."""
    kind: Literal["exact", "ivf"] = Field("exact", json_schema_extra=affects("index"))
    """exact: flat inner-product index. ivf: inverted lists (approximate), for corpora far larger than 2,587."""
    nlist: int = Field(64, ge=1, json_schema_extra=affects("index"))
    """ivf: number of inverted lists (capped at the corpus size / 39, the FAISS training minimum)."""
    nprobe: int = Field(8, ge=1, json_schema_extra=affects("index"))
    """ivf: lists visited per query."""
    use_gpu: bool | Literal["auto"] = Field("auto", json_schema_extra=affects("index"))
    """Search on the GPU with faiss-gpu; auto: when faiss has GPU support and a GPU is visible."""
    unseen_boost: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra=affects("index"))
    """Added to the cosine score of every misconception without a labelled training pair (for a fold: in its
    training part). A fine-tuned retriever favours the misconceptions it was trained on; new questions often
    carry others. 0: plain cosine."""
    unseen_top1_share: float | None = Field(None, ge=0.0, le=1.0, json_schema_extra=affects("index"))
    """Calibrate the unseen boost on the rows being predicted, without labels: at infer (and for the test rows of
    the index stage and serve's /submission) the boost is the one for which this share of the rows' top-1
    candidates are unseen misconceptions (:func:`eedi.retrieval.search.calibrate_unseen_boost`); it replaces
    ``unseen_boost`` there and may come out negative. The competition's test is about 3 unseen pairs to 1 seen;
    its 3rd-place team scaled unseen scores to 75 % unseen top-1 predictions (private MAP@25 0.564 -> 0.600).
    Validation folds keep ``unseen_boost``. None: the fixed ``unseen_boost`` everywhere."""
    knn_weight: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra=affects("index"))
    """Label memory: a misconception's score rises by this share of the gap to its best match among the query's
    nearest training queries labelled with it (eedi.index.CandidateRetriever). 0: off."""
    knn_neighbours: int = Field(32, ge=1, json_schema_extra=affects("index"))
    """Training queries the label memory looks at per query."""


class RerankerLoraSection(LoraSection):
    layers: int | None = Field(None, ge=1, json_schema_extra=AS_SECTION)
    """Adapt only the top this-many transformer layers (None: all). Backpropagation then stops below the
    lowest adapted layer, which is what makes CPU training affordable."""


# transformers' trainer_utils.FSDPOption: the words the Trainer's `fsdp` argument accepts.
FSDP_OPTIONS = {"full_shard", "shard_grad_op", "no_shard", "hybrid_shard", "hybrid_shard_zero2", "offload", "auto_wrap"}


class RerankerMoveSection(Section):
    """What a CPU second stage may move within the top ``reranker.depth`` (:mod:`eedi.rerank.moves`)."""

    move: Literal["all", "seen", "top_k", "blend"] = Field("blend", json_schema_extra=RERANKING)
    """all (order by the model's score), seen (only candidates seen in training, among their own places; unseen
    ones keep the retriever's ranks), top_k (only the retriever's first ``top_k``, among themselves), blend
    (``blend_weight`` x the model's score + the rest x the retriever's, both min-max scaled per pair)."""
    top_k: int = Field(5, ge=1, json_schema_extra=RERANKING)
    """move=top_k: how many of the retriever's first candidates the model reorders."""
    blend_weight: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra=RERANKING)
    """move=blend: the model's share of the blended score."""


class FeatureRerankerSection(RerankerMoveSection):
    """``reranker.kind: features``: LightGBM lambdarank over retrieval, label and TF-IDF features
    (:mod:`eedi.rerank.ltr`), trained on the validation candidates of the other folds in ``folds.use``.
    ``move: blend`` at 0.5 had the best mix gain on the unseen-rich folds (+0.012, against +0.008 for all),
    checked on the question-grouped folds (+0.022); docs/results.md "Real data: the feature reranker stage"."""

    n_estimators: int = Field(300, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Boosting rounds."""
    learning_rate: float = Field(0.03, gt=0.0, json_schema_extra=TRAINS_RERANKER)
    """Shrinkage of each tree."""
    num_leaves: int = Field(7, ge=2, json_schema_extra=TRAINS_RERANKER)
    """Leaves per tree (small: a few thousand training pairs)."""
    min_child_samples: int = Field(50, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Fewest candidate rows in a leaf."""
    test_mix_weighting: bool = Field(True, json_schema_extra=TRAINS_RERANKER)
    """Weigh training pairs so that pairs of unseen misconceptions carry ``evaluation.unseen_share`` of the
    total (the test mix), whatever their share of the folds. false: every pair the same."""


class PointwiseRerankerSection(RerankerMoveSection):
    """``reranker.kind: pointwise``: a cross-encoder (sentence-transformers ``CrossEncoder``, one logit per
    (query, misconception)) trained per fold on the fold's training candidates with a softmax cross-entropy over
    a group of the positive, hard negatives from the retriever's top ``hard_negative_pool`` and random negatives
    (:mod:`eedi.rerank.pointwise`). On real data (unseen-rich fold 0) ``blend`` at 0.3 gained +0.011 at the mix
    (0.2: +0.006, 0.5: +0.004); docs/results.md "Real data: rerankers on CPU"."""

    blend_weight: float = Field(0.3, ge=0.0, le=1.0, json_schema_extra=RERANKING)
    """move=blend: the model's share of the blended score."""
    backbone: str = Field("retriever", json_schema_extra=TRAINS_RERANKER)
    """Where the cross-encoder starts. retriever: the run's own fine-tuned retriever of the same fold (a BERT-style
    encoder saved whole, as the CPU profiles' retrievers are) with a new one-logit head; otherwise a Hugging Face
    model id or local folder (a cross-encoder, or an encoder that gets a new head)."""
    hard_negatives: int = Field(3, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Negatives per training group drawn from the retriever's top ``hard_negative_pool`` for that pair."""
    hard_negative_pool: int = Field(32, ge=2, json_schema_extra=TRAINS_RERANKER)
    """The retriever ranks the hard negatives are drawn from (the 1st-place ranker: its top 32)."""
    random_negatives: int = Field(2, ge=0, json_schema_extra=TRAINS_RERANKER)
    """Other groups' positives in the same batch added to each group's softmax as easy negatives (all-hard
    negatives hurt, sentence-transformers' reranker guide)."""
    epochs: float = Field(1.0, gt=0, json_schema_extra=TRAINS_RERANKER)
    """Passes over the training groups."""
    lr: float = Field(5e-5, gt=0, json_schema_extra=TRAINS_RERANKER)
    """Peak learning rate (linear decay after a 10 % warm-up)."""
    batch_size: int = Field(16, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Training groups per step."""
    max_length: int = Field(256, ge=16, json_schema_extra=affects("train-reranker", "infer", trains=True))
    """Token limit of a (query, misconception) input."""
    max_train_pairs: int | None = Field(None, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Cap on training pairs (a random subset); None: all of them."""
    score_batch_size: int = Field(64, ge=1, json_schema_extra=RERANKING)
    """(query, misconception) inputs per forward pass when scoring."""


class RerankerConfig(Section):
    """Stage ``train-reranker`` and the reranking inside evaluate/infer: a listwise LoRA causal LM that reads
    a window of candidates labelled A, B, C, ... and answers with the label of the right one."""

    enabled: bool = Field(True, json_schema_extra=affects("train-reranker", "quantize", "infer"))
    """false: no reranker. train-reranker records itself as skipped, and infer writes the submission in the
    retriever's order (for profiles where a reranker does not pay for its compute; quantize then needs
    quantize.enabled=false)."""
    kind: Literal["listwise", "pointwise", "features"] = Field(
        "listwise", json_schema_extra=affects("train-reranker", "quantize", "infer", trains=True)
    )
    """listwise: the LoRA causal LM below (the CUDA default). pointwise: a cross-encoder that scores each candidate
    alone (``reranker.pointwise``), for CPU. features: a LightGBM ranker over cheap features
    (``reranker.features``), for CPU; it trains on other folds' validation candidates, so it needs at least
    two folds in ``folds.use``. listwise and pointwise train on a fold's training candidates, so they need at
    least one. pointwise and features have nothing to quantize (``quantize.enabled=false``)."""
    pointwise: PointwiseRerankerSection = Field(default_factory=PointwiseRerankerSection)
    features: FeatureRerankerSection = Field(default_factory=FeatureRerankerSection)
    backbone: str = Field("Qwen/Qwen2.5-14B-Instruct", json_schema_extra=TRAINS_RERANKER)
    """Hugging Face model id or local folder of an instruction-tuned causal LM with a chat template."""
    load_in_4bit: bool = Field(False, json_schema_extra=TRAINS_RERANKER)
    """QLoRA: load the backbone in bitsandbytes NF4 for training (CUDA only); merging reloads it in runtime.dtype."""
    lora: RerankerLoraSection = Field(default_factory=RerankerLoraSection, json_schema_extra=TRAINS_RERANKER)
    window_size: int = Field(
        5, ge=2, le=26, json_schema_extra=affects("train-reranker", "quantize", "infer", trains=True)
    )
    """Candidates per prompt, labelled A, B, C, ... (every label must be one token of the backbone's tokenizer)."""
    windows_per_pair: int = Field(2, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Training windows built per labelled (question, wrong answer) pair."""
    hard_ratio: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra=TRAINS_RERANKER)
    """Share of training windows that are hard (the candidates ranked next to the positive); the rest draw
    their candidates at random from the retrieved top `depth`."""
    shuffle_windows: bool = Field(True, json_schema_extra=TRAINS_RERANKER)
    """Shuffle each training window's candidates. In retriever order the label's position carries the
    retriever's rank (the positive sits near the top), a shortcut a small model takes instead of reading."""
    max_train_windows: int | None = Field(None, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Cap on training windows (a random subset); None: all of them."""
    max_length: int = Field(1024, ge=32, json_schema_extra=affects("train-reranker", "quantize", "infer", trains=True))
    """Prompt token limit; longer prompts keep their last max_length tokens (the candidates and the answer slot)."""
    epochs: float = Field(1.0, gt=0, json_schema_extra=TRAINS_RERANKER)
    """Passes over the training windows."""
    lr: float = Field(1e-4, gt=0, json_schema_extra=TRAINS_RERANKER)
    """Peak learning rate (cosine decay after warm-up)."""
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, json_schema_extra=TRAINS_RERANKER)
    """Share of the optimizer steps spent warming the learning rate up."""
    batch_size: int = Field(8, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Training windows per device and micro-batch."""
    grad_accum: int = Field(1, ge=1, json_schema_extra=TRAINS_RERANKER)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum x devices)."""
    gradient_checkpointing: bool = Field(False, json_schema_extra=TRAINS_RERANKER)
    """Recompute activations in the backward pass (large backbones on CUDA)."""
    save_steps: int = Field(200, ge=1, json_schema_extra=affects())
    """Write a resumable Trainer checkpoint every this many optimizer steps (fold dir's checkpoints/)."""
    depth: int = Field(25, ge=1, json_schema_extra=affects("train-reranker", "quantize", "infer", trains=True))
    """Rerank the retriever's top `depth` candidates; the ones below keep retriever order after them."""
    scheme: Literal["sliding", "tournament"] = Field("sliding", json_schema_extra=RERANKING)
    """sliding: windows of window_size every `stride` ranks, a candidate's score is its mean probability over
    the windows it is in. tournament: knock-out rounds of windows, the best `advance` of each go on."""
    stride: int = Field(5, ge=1, json_schema_extra=RERANKING)
    """sliding: ranks between the starts of consecutive windows (< window_size: windows overlap)."""
    advance: int = Field(1, ge=1, json_schema_extra=RERANKING)
    """tournament: candidates of each window that go on to the next round."""
    fusion_weight: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra=RERANKING)
    """final score = w * reranker probability + (1 - w) * retriever cosine min-max scaled over the top `depth`."""
    tta_reverse: bool = Field(False, json_schema_extra=RERANKING)
    """Test-time augmentation: also score every window in reversed order and average the two probabilities."""
    backend: Literal["transformers", "vllm"] = Field("transformers", json_schema_extra=affects("train-reranker"))
    """Scoring backend inside train-reranker (validation folds). That stage runs on the training side, which has no
    vLLM: a config naming vllm here is rejected before any stage runs; vLLM serves the reranker at infer
    (infer.backend)."""
    score_batch_size: int = Field(16, ge=1, json_schema_extra=RERANKING)
    """Prompts per forward pass of the transformers backend."""
    tensor_parallel_size: int = Field(1, ge=1, json_schema_extra=RERANKING)
    """vllm backend: GPUs the reranker is sharded over."""
    fsdp: str = Field("", json_schema_extra=affects())
    """Training across GPUs that the model does not fit one of: the Trainer's `fsdp` argument, e.g. "full_shard
    auto_wrap" (PyTorch FSDP; ZeRO-3's equivalent). "": plain DDP (a full copy per GPU). Not with
    load_in_4bit or deepspeed."""
    fsdp_config: dict[str, Any] = Field(default_factory=dict, json_schema_extra=affects())
    """The Trainer's `fsdp_config` (e.g. {transformer_layer_cls_to_wrap: [Qwen2DecoderLayer]}); with fsdp only."""
    deepspeed: Path | None = Field(None, json_schema_extra=affects())
    """DeepSpeed JSON config (e.g. ZeRO stage 3) for the Trainer's `deepspeed` argument; needs the deepspeed
    package in the train environment (not installed by `make setup`). Not with fsdp."""

    @model_validator(mode="after")
    def _sharding_consistent(self) -> RerankerConfig:
        unknown = sorted(set(self.fsdp.split()) - FSDP_OPTIONS)
        if unknown:
            raise ValueError(f"fsdp: unknown FSDP option(s) {unknown}; options: {sorted(FSDP_OPTIONS)}")
        if self.fsdp and self.deepspeed is not None:
            raise ValueError("fsdp and deepspeed both set: choose one way of sharding the reranker")
        if self.fsdp_config and not self.fsdp:
            raise ValueError("fsdp_config is set but fsdp is empty: set fsdp (e.g. 'full_shard auto_wrap')")
        if (self.fsdp or self.deepspeed is not None) and self.load_in_4bit:
            raise ValueError("load_in_4bit (QLoRA) does not shard: use fsdp/deepspeed with load_in_4bit=false")
        if self.deepspeed is not None:
            if not self.deepspeed.is_file():
                raise ValueError(f"deepspeed: no such file {self.deepspeed}")
            try:
                json.loads(self.deepspeed.read_text())
            except ValueError as err:
                raise ValueError(f"deepspeed: {self.deepspeed} is not JSON ({err})") from None
        return self

    @model_validator(mode="after")
    def _windows_fit(self) -> RerankerConfig:
        if self.advance >= self.window_size:
            raise ValueError(f"advance={self.advance} must be smaller than window_size={self.window_size}")
        if self.stride > self.window_size:
            raise ValueError(f"stride={self.stride} > window_size={self.window_size} would leave ranks unscored")
        return self


class SyntheticEngineConfig(Section):
    """vLLM engine settings (``vllm.LLM(...)``) for the generator and the judge."""

    model: str = Field("models/smollm2-135m-instruct", json_schema_extra=SYNTHESIS)
    """Instruction (chat) model: a local HF folder or a hub id, e.g. Qwen/Qwen2.5-32B-Instruct-AWQ."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", json_schema_extra=SYNTHESIS)
    """auto: runtime's choice (float32 on CPU, bfloat16 on CUDA). AWQ checkpoints want float16."""
    quantization: str | None = Field(None, json_schema_extra=SYNTHESIS)
    """vLLM quantization method (awq_marlin, awq, gptq_marlin, compressed-tensors, ...); None: read from the
    checkpoint's config. The CPU build has no 4-bit kernels on AVX2 machines."""
    tensor_parallel_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(1, json_schema_extra=SYNTHESIS)
    """GPUs the model is sharded over (on CPU: NUMA nodes); auto: every visible one. More than are visible is
    refused when the stage starts. The model's attention heads must divide evenly by it (Qwen2.5-32B: 40)."""
    max_model_len: int = Field(2048, ge=1, json_schema_extra=SYNTHESIS)
    """Context length the engine reserves per sequence: the longest prompt plus sampling.max_tokens must fit."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, json_schema_extra=SYNTHESIS)
    """Share of GPU memory vLLM may take (weights + KV cache)."""
    kv_cache_gb: float | None = Field(None, gt=0, json_schema_extra=SYNTHESIS)
    """KV cache size in GiB (vLLM's kv_cache_memory_bytes); None: sized from gpu_memory_utilization. Set it
    on CPU, where the default would reserve that share of the host RAM."""
    enforce_eager: bool = Field(False, json_schema_extra=SYNTHESIS)
    """Skip CUDA-graph capture / torch.compile (faster start, slower decoding; true on CPU)."""


class SyntheticSamplingConfig(Section):
    """``vllm.SamplingParams`` for generation (the judge decodes greedily)."""

    temperature: float = Field(0.8, ge=0.0, json_schema_extra=SYNTHESIS)
    """0: greedy."""
    top_p: float = Field(0.95, gt=0.0, le=1.0, json_schema_extra=SYNTHESIS)
    """Nucleus sampling mass."""
    max_tokens: int = Field(384, ge=16, json_schema_extra=SYNTHESIS)
    """Token budget per completion; a completion cut off by it fails to parse and is counted as such."""
    seed: int = Field(0, json_schema_extra=SYNTHESIS)
    """vLLM engine seed (LLM(seed=...)): the same targets in the same batches give the same samples."""
    n: int = Field(2, ge=1, json_schema_extra=SYNTHESIS)
    """Completions sampled per target prompt (the best per_target valid ones are kept)."""


class SyntheticJudgeConfig(Section):
    """Optional LLM-judge pass with the same engine."""

    enabled: bool = Field(False, json_schema_extra=SYNTHESIS)
    """Score every valid, de-duplicated question 1-5 (does the distractor follow from the misconception?)."""
    threshold: int = Field(3, ge=1, le=5, json_schema_extra=SYNTHESIS)
    """Keep questions scored at least this."""


class SyntheticDedupConfig(Section):
    """Duplicate removal against the real training pairs, earlier synthetic rows and each other."""

    near_duplicate_threshold: float = Field(0.95, gt=0.0, le=1.0, json_schema_extra=SYNTHESIS)
    """Cosine similarity (question + target distractor text) at or above which a question is a near duplicate."""


class SyntheticConfig(Section):
    """Stage ``synthesize``: vLLM-generated questions for misconceptions with few or no training examples."""

    enabled: bool = Field(False, json_schema_extra=SYNTHESIS)
    """Generate; false: the stage writes an empty (header-only) train_synthetic.csv and returns."""
    use: bool = Field(False, json_schema_extra=affects("train-retriever", "train-reranker", trains=True))
    """Train the retriever and the reranker on the synthetic rows too (training parts only, never validation)."""
    budget: int = Field(16, ge=0, json_schema_extra=SYNTHESIS)
    """Number of target misconceptions (fewest training examples first)."""
    max_train_examples: int = Field(0, ge=0, json_schema_extra=SYNTHESIS)
    """Only misconceptions with at most this many labelled training pairs are targets."""
    per_target: int = Field(1, ge=1, json_schema_extra=SYNTHESIS)
    """Questions kept per target (highest judge score first, else first valid)."""
    few_shot: int = Field(3, ge=0, json_schema_extra=SYNTHESIS)
    """Real questions shown per prompt, taken from the misconceptions nearest to the target."""
    embedder: str = Field("models/all-minilm-l6-v2", json_schema_extra=SYNTHESIS)
    """sentence-transformers model (folder or hub id) for nearest misconceptions and near duplicates; "tfidf":
    scikit-learn TF-IDF instead."""
    question_chars: tuple[int, int] = Field((10, 500), json_schema_extra=SYNTHESIS)
    """[min, max] characters of QuestionText (enforced while decoding and validated)."""
    answer_chars: tuple[int, int] = Field((1, 100), json_schema_extra=SYNTHESIS)
    """[min, max] characters of each answer text."""
    checkpoint_every: int = Field(64, ge=1, json_schema_extra=SYNTHESIS)
    """Targets generated per batch; results are written after each, so an interrupted run resumes from there."""
    engine: SyntheticEngineConfig = Field(default_factory=SyntheticEngineConfig)
    sampling: SyntheticSamplingConfig = Field(default_factory=SyntheticSamplingConfig)
    judge: SyntheticJudgeConfig = Field(default_factory=SyntheticJudgeConfig)
    dedup: SyntheticDedupConfig = Field(default_factory=SyntheticDedupConfig)

    @field_validator("question_chars", "answer_chars")
    @classmethod
    def _bounds_ordered(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= bounds[0] <= bounds[1]:
            raise ValueError(f"need 1 <= min <= max, got {list(bounds)}")
        return bounds

    @model_validator(mode="after")
    def _enough_samples(self) -> SyntheticConfig:
        if self.sampling.n < self.per_target:
            raise ValueError(f"sampling.n={self.sampling.n} must be at least per_target={self.per_target}")
        if self.sampling.temperature == 0 and self.sampling.n > 1:
            raise ValueError(
                f"sampling.n={self.sampling.n} with temperature 0 samples the same completion "
                "n times; use n=1 or a temperature above 0"
            )
        return self


class QuantizeCalibrationConfig(Section):
    """Calibration data for GPTQ/AWQ: the reranker's own prompts, never validation rows."""

    n_samples: int = Field(256, ge=1, json_schema_extra=QUANTIZATION)
    """Reranker windows built from the training part of the source model's fold(s)."""
    max_seq_length: int = Field(1024, ge=16, json_schema_extra=QUANTIZATION)
    """Token limit per calibration prompt; longer prompts keep their end, as in scoring."""


class QuantizeGPTQConfig(Section):
    dampening_frac: float = Field(0.01, gt=0.0, lt=1.0, json_schema_extra=QUANTIZATION)
    """Share of the Hessian's mean diagonal added to it before inversion (GPTQ's stabiliser)."""


class QuantizeAWQConfig(Section):
    n_grid: int = Field(20, ge=3, json_schema_extra=QUANTIZATION)
    """Scale exponents tried per layer in the grid search (the identity, then evenly spaced in [0, 1];
    fewer: faster, coarser). llm-compressor needs at least 3 with duo_scaling."""
    duo_scaling: bool = Field(True, json_schema_extra=QUANTIZATION)
    """Scales from activations and weights together (true) or from activations alone (false)."""


class QuantizeConfig(Section):
    """Stage ``quantize``: the merged reranker to 4-bit weights (W4A16) with GPTQ and AWQ through
    llm-compressor (compressed-tensors checkpoints), each reloaded and measured against the original."""

    enabled: bool = Field(True, json_schema_extra=QUANTIZATION)
    """false: the stage only records that it was skipped."""
    methods: list[Literal["gptq", "awq"]] = Field(
        default_factory=lambda: ["gptq", "awq"], json_schema_extra=QUANTIZATION
    )
    """Quantization algorithms; each writes quantized/reranker-{method}/."""
    scheme: Literal["W4A16", "W4A16_ASYM"] = Field("W4A16", json_schema_extra=QUANTIZATION)
    """compressed-tensors preset: int4 weights in groups, 16-bit activations; _ASYM adds a zero point per group."""
    group_size: int = Field(128, ge=1, json_schema_extra=QUANTIZATION)
    """Weights per quantization group; must divide the input width of every quantized Linear layer
    (checked before calibration; SmolLM2's 576 needs 64 or 32)."""
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"], json_schema_extra=QUANTIZATION)
    """Layers kept in 16-bit: module names or "re:<regex>" (llm-compressor's matching)."""
    source: Literal["auto", "full"] | int = Field("auto", json_schema_extra=QUANTIZATION)
    """Reranker to quantize: a fold index, "full" (reranker/full), or auto: full when it exists, else the first
    fold in folds.use. A missing merged model is built from the fold's LoRA adapter."""
    backend: Literal["transformers", "vllm"] = Field("transformers", json_schema_extra=QUANTIZATION)
    """Engine that reloads and scores the models for the before/after measurement. transformers unpacks the
    int4 weights on load (same speed as unquantized); vllm runs them with W4A16 kernels (CUDA) but must be
    installed beside llm-compressor, which the split environments of this project do not do."""
    eval_max_pairs: int | None = Field(None, ge=1, json_schema_extra=QUANTIZATION)
    """Validation pairs reranked for the before/after measurement (a seeded random subset); None: all."""
    calibration: QuantizeCalibrationConfig = Field(default_factory=QuantizeCalibrationConfig)
    gptq: QuantizeGPTQConfig = Field(default_factory=QuantizeGPTQConfig)
    awq: QuantizeAWQConfig = Field(default_factory=QuantizeAWQConfig)

    @field_validator("methods")
    @classmethod
    def _methods_distinct(cls, methods: list[str]) -> list[str]:
        if not methods or len(set(methods)) != len(methods):
            raise ValueError(f"need one or more distinct methods, got {methods}")
        return methods


class EvaluationConfig(Section):
    """How every stage scores its validation rows, ``eedi score`` its holdout and the benchmarks their folds."""

    unseen_share: float = Field(
        0.75, ge=0.0, le=1.0, json_schema_extra=affects("index", "train-reranker", "quantize", "evaluate")
    )
    """Weight of the misconceptions unseen in training in ``MAP@25 (mix)`` = (1 - s) x seen + s x unseen, the
    headline figure. The competition's hidden test holds about three unseen pairs to one seen: the 3rd-place
    team's probes with one prediction per row scored 0.154 predicting only seen misconceptions and 0.444 only
    unseen ones. Question-grouped folds hold only 20-30 % unseen pairs, so plain MAP@25 on them rewards fitting
    the seen misconceptions."""


class TrackingConfig(Section):
    """Experiment tracking: where the Trainers' logs and every stage's metrics and timings go (:mod:`eedi.tracking`)."""

    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = Field("none", json_schema_extra=affects())
    """none: the run directory only. tensorboard / mlflow: local files under run_dir/tracking. wandb: see wandb_mode."""
    experiment: str = Field("eedi", json_schema_extra=affects())
    """MLflow experiment / wandb project name."""
    wandb_mode: Literal["offline", "online"] = Field("offline", json_schema_extra=affects())
    """offline writes run_dir/tracking/wandb for a later `wandb sync`; online needs network and a login."""


class Config(Section):
    """The whole run. Sections for stages are added by their modules' schemas below."""

    run_dir: Path = Field(Path("runs/default"), json_schema_extra=affects())
    """Folder every stage writes into (layout: :mod:`eedi.layout`)."""
    seed: int = Field(
        42, json_schema_extra=affects("train-retriever", "train-reranker", "quantize", "infer", trains=True)
    )
    """Seed of every random draw (negatives, windows, LoRA initialisation): same seed, same run."""
    data: DataConfig = Field(default_factory=DataConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    retriever: RetrieverConfig = Field(default_factory=RetrieverConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    reranker: RerankerConfig = Field(default_factory=RerankerConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _reranker_runnable(self) -> Config:
        rc = self.reranker
        if not rc.enabled:
            return self
        needed = 2 if rc.kind == "features" else 1
        if len(self.folds.use) < needed:
            where = "the other folds' validation" if rc.kind == "features" else "a fold's training"
            raise ValueError(
                f"folds.use={list(self.folds.use)}: reranker.kind={rc.kind} trains on {where} candidates, so it "
                f"needs at least {needed} fold(s) in folds.use (or reranker.enabled=false)"
            )
        if rc.kind != "listwise" and self.quantize.enabled:
            raise ValueError(
                f"quantize.enabled: reranker.kind={rc.kind} has no language model to quantize; set it false"
            )
        return self


# --------------------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    # YAML parsing gives ints, floats, bools, lists ([0,1]) and null the way users expect.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {err}") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):
            # A check across several keys names them in its message; the section's whole content would bury it.
            where = "" if key == "<root>" else f"section '{key}': "
            lines.append(f"{source}: {where}{e['msg']}")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply ``key=value`` overrides, validate. Raises ConfigError."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def config_to_dict(config: Config) -> dict:
    """JSON-safe dict of the resolved config (paths as strings)."""
    return config.model_dump(mode="json")


@dataclass(frozen=True)
class Effect:
    """What one key affects, as declared beside it (:func:`affects`)."""

    stages: tuple[str, ...]
    trains: bool

    def retrains(self, stage: str) -> bool:
        """Whether a change of the key changes the models trained by ``stage``."""
        return self.trains and stage in self.stages and stage in MODEL_STAGES


def _missing_declaration(key: str, owner: type[BaseModel], name: str) -> str:
    return (
        f"config key {key} ({owner.__name__}.{name} in src/eedi/config.py) does not declare what it affects: "
        f"give it `json_schema_extra=affects(<stages that read it>)`, with trains=True when it changes what a "
        f'model stage trains, e.g. `{name}: ... = Field(<default>, json_schema_extra=affects("index"))`, or '
        f"`affects()` when it changes no output"
    )


def _effects(model: type[BaseModel], prefix: str, holder: Effect | None) -> dict[str, Effect]:
    found: dict[str, Effect] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        declared = extra.get("affects")
        if declared == AS_SECTION["affects"]:
            if holder is None:
                raise ConfigError(
                    f"config key {key} affects what its section's key does, and that key declares nothing"
                )
            effect = holder
        elif declared is not None:
            effect = Effect(tuple(declared["stages"]), bool(declared["trains"]))
        else:
            effect = None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(_effects(annotation, f"{key}.", effect))
        elif effect is None:
            raise ConfigError(_missing_declaration(key, model, name))
        else:
            found[key] = effect
    return found


@cache
def key_effects() -> dict[str, Effect]:
    """Every leaf key of :class:`Config` (``"reranker.lora.r"``) with what it affects. Raises ConfigError
    naming the first key that declares nothing."""
    return _effects(Config, "", None)


def _value(resolved: dict, key: str) -> Any:
    for part in key.split("."):
        resolved = resolved[part]
    return resolved


def stage_values(config: Config, stage: str) -> dict[str, Any]:
    """The keys that ``stage`` reads and their values (JSON-safe): what its fingerprint is made of."""
    resolved = config_to_dict(config)
    return {key: _value(resolved, key) for key, effect in key_effects().items() if stage in effect.stages}


def trained_values(config: Config, stage: str) -> dict[str, Any]:
    """The keys that change what ``stage`` (a model stage) trains, and their values."""
    resolved = config_to_dict(config)
    return {key: _value(resolved, key) for key, effect in key_effects().items() if effect.retrains(stage)}


# --------------------------------------------------------------------------- reference


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("NoneType", "None")


def _default_text(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, Path):
        value = str(value)
    text = json.dumps(value).replace("|", "\\|")
    return f"`{text}`" if len(text) <= 80 else f"`{text[:77]}...`"


def _affects_text(key: str) -> str:
    effect = key_effects()[key]
    if not effect.stages:
        return "nothing"
    return ", ".join(f"{s} (retrains)" if effect.retrains(s) else s for s in effect.stages)


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{key}.")
            continue
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(
            (key, _type_name(annotation).replace("|", "\\|"), _default_text(field), _affects_text(key), description)
        )
    return rows


def reference_markdown() -> str:
    """docs/config.md: every key of :class:`Config` with its type, default and description.

    Generated from the schema by ``eedi config-docs``; a test fails when the committed file is stale."""
    lines = [
        "# Config reference",
        "",
        "Generated from the pydantic schema in `src/eedi/config.py` by `eedi config-docs --out docs/config.md`;",
        "do not edit by hand. Every key can be set in a YAML file or overridden as `key=value` on the",
        "command line; an unknown key or a wrong type is an error naming the key. *re-runs*: the stages whose",
        "outputs a change of the key replaces (their downstream stages follow), and (retrains) where it changes",
        "what that stage trains; elsewhere trained models are reused (`eedi run --dry-run` shows it for a config).",
        "",
    ]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            doc = " ".join((annotation.__doc__ or "").split())
            lines += [
                f"## `{name}`",
                "",
                *([doc, ""] if doc else []),
                "| key | type | default | re-runs | description |",
                "|---|---|---|---|---|",
            ]
            lines += [f"| `{k}` | {t} | {d} | {a} | {desc} |" for k, t, d, a, desc in _rows(annotation, f"{name}.")]
            lines.append("")
    top = [row for row in _rows(Config, "") if "." not in row[0]]
    lines += ["## Top level", "", "| key | type | default | re-runs | description |", "|---|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {a} | {desc} |" for k, t, d, a, desc in top]
    return "\n".join(lines) + "\n"
