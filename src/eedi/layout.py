"""The run directory's layout: every path a stage writes or reads, named in one place.

Stages, the report, the Kaggle packager, the service and the stage registry's declared outputs all take
their paths from :class:`RunLayout`; no other module spells a piece of them. A *model name* is
``fold_{k}`` for the model trained without fold k (validated on it) or ``full`` for the model trained on
every labelled row (``folds.full_fit``); :func:`model_name` makes one. Tables are documented in
``docs/stages.md``.

::

    run_dir/
      manifest.json              config, git commit, input hashes; per stage: status, fingerprint, seconds,
                                 peak RSS, outputs, summary                               (every stage)
      logs/<stage>.log           the stage's full library log                              (eedi run)
      pairs.parquet              one row per (question, wrong answer), train and test      (prepare)
      misconceptions.parquet     MisconceptionId, MisconceptionName: the retrieval corpus  (prepare)
      folds.csv                  QuestionId, fold                                          (prepare)
      prepare_summary.json       counts and per-fold unseen shares                         (prepare)
      synthetic/                 train_synthetic.csv, rejected.csv, state.json, summary.json (synthesize)
      retriever/<name>/          model/, adapter/ (LoRA), checkpoints/ (while training),
                                 train_log.jsonl, train_info.json                          (train-retriever)
      index/<name>.faiss         FAISS index (+ <name>.ids.npy: row -> MisconceptionId)    (index)
      index/<name>.embeddings.npz  the texts it embedded, for eedi serve                  (index)
      candidates/<name>.parquet  top-K per pair: fold_k (train + val parts), test          (index)
      reranker/<name>/           merged/, adapter/, checkpoints/, train_windows.parquet,
                                 train_log.jsonl, train_info.json                          (train-reranker)
      reranked/fold_k.parquet    candidates + reranker_score, final_score, final_rank      (train-reranker)
      quantized/                 reranker-<method>/ (gptq, awq), summary.json              (quantize)
      metrics.json               fold_k.{retriever, reranker, reranker_<method>}, mean     (index ... evaluate)
      report.html                the report page                                           (evaluate, infer)
      submission.csv             QuestionId_Answer, MisconceptionId (25 ids)               (infer)
      tracking/                  tensorboard/, mlruns/ or wandb/ (tracking.report_to)      (every stage)
      labels.sqlite              labels accepted in `eedi serve`                           (serve)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FULL = "full"
TEST = "test"
"""Name of the test pairs' candidates table (``candidates/test.parquet``)."""
LTR_MODEL_FILE = "lightgbm.txt"
"""The feature reranker's booster inside its model folder (the run's reranker/<name>/, a Kaggle package's reranker/)."""


def model_name(fold: int | None) -> str:
    """``fold_{k}`` for a cross-validation fold, ``full`` for the full-fit model (fold None)."""
    return FULL if fold is None else f"fold_{fold}"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # ---- run-wide files
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    @property
    def tracking(self) -> Path:
        """tensorboard/, mlruns/ or wandb/ when ``tracking.report_to`` is set."""
        return self.root / "tracking"

    @property
    def labels_db(self) -> Path:
        return self.root / "labels.sqlite"

    # ---- prepare
    @property
    def pairs(self) -> Path:
        return self.root / "pairs.parquet"

    @property
    def misconceptions(self) -> Path:
        return self.root / "misconceptions.parquet"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def prepare_summary(self) -> Path:
        return self.root / "prepare_summary.json"

    # ---- synthesize
    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def synthetic_rows(self) -> Path:
        return self.synthetic / "train_synthetic.csv"

    @property
    def synthetic_rejected(self) -> Path:
        return self.synthetic / "rejected.csv"

    @property
    def synthetic_state(self) -> Path:
        return self.synthetic / "state.json"

    @property
    def synthetic_summary(self) -> Path:
        return self.synthetic / "summary.json"

    # ---- models (retriever and reranker share the per-model folder shape)
    def retriever(self, name: str) -> Path:
        return self.root / "retriever" / name

    def retriever_model(self, name: str) -> Path:
        return self.retriever(name) / "model"

    def reranker(self, name: str) -> Path:
        return self.root / "reranker" / name

    def reranker_merged(self, name: str) -> Path:
        return self.reranker(name) / "merged"

    def reranker_ltr(self, name: str) -> Path:
        """reranker.kind=features: the LightGBM booster (text format) of model ``name``."""
        return self.reranker(name) / LTR_MODEL_FILE

    def reranker_model(self, name: str, kind: str) -> Path:
        """The file or folder that holds reranker ``name`` of ``reranker.kind`` once it is trained."""
        if kind == "features":
            return self.reranker_ltr(name)
        if kind == "pointwise":
            return self.cross_encoder_dir(self.reranker(name))
        return self.reranker_merged(name)

    @staticmethod
    def model_dir(model_root: Path) -> Path:
        """The loadable model inside a retriever/<name> folder."""
        return model_root / "model"

    @staticmethod
    def merged_dir(model_root: Path) -> Path:
        """The merged (or fully fine-tuned) model inside a reranker/<name> folder."""
        return model_root / "merged"

    @staticmethod
    def query_encoder(model_dir: Path) -> Path:
        """The Hugging Face model that embeds queries inside a retriever's ``model/``: the folder itself, or its
        query route when the misconceptions have their own (``retriever.document_tower: frozen``, saved as a
        sentence-transformers Router)."""
        routed = model_dir / "query_0_Transformer"
        return routed if (model_dir / "router_config.json").is_file() and routed.is_dir() else model_dir

    @staticmethod
    def cross_encoder_dir(model_root: Path) -> Path:
        """reranker.kind=pointwise: the sentence-transformers CrossEncoder inside a reranker/<name> folder."""
        return model_root / "cross_encoder"

    @staticmethod
    def adapter_dir(model_root: Path) -> Path:
        return model_root / "adapter"

    @staticmethod
    def checkpoints_dir(model_root: Path) -> Path:
        return model_root / "checkpoints"

    @staticmethod
    def train_log(model_root: Path) -> Path:
        return model_root / "train_log.jsonl"

    @staticmethod
    def train_info(model_root: Path) -> Path:
        return model_root / "train_info.json"

    @staticmethod
    def train_windows(model_root: Path) -> Path:
        return model_root / "train_windows.parquet"

    # ---- index
    def index(self, name: str) -> Path:
        return self.root / "index" / f"{name}.faiss"

    def embeddings(self, name: str) -> Path:
        """The embeddings the index stage made with one retriever model (``eedi.retrieval.search.EmbeddingStore``)."""
        return self.root / "index" / f"{name}.embeddings.npz"

    def candidates(self, name: str) -> Path:
        """``candidates/fold_k.parquet`` or ``candidates/test.parquet`` (name :data:`TEST`)."""
        return self.root / "candidates" / f"{name}.parquet"

    def fold_candidates(self) -> list[Path]:
        return sorted((self.root / "candidates").glob("fold_*.parquet"))

    # ---- reranker outputs
    def reranked(self, name: str) -> Path:
        return self.root / "reranked" / f"{name}.parquet"

    # ---- quantize
    @property
    def quantized(self) -> Path:
        return self.root / "quantized"

    def quantized_model(self, method: str) -> Path:
        return self.quantized / f"reranker-{method}"

    @property
    def quantized_summary(self) -> Path:
        return self.quantized / "summary.json"
