"""Stage ``infer``: test pairs -> reranked candidates -> ``submission.csv``.

Two entry points share the same tail (rerank, then write a validated submission):

* :func:`run` - the pipeline stage. Reads ``candidates/test.parquet`` written by ``index``
  and the reranker chosen by ``infer.reranker_model`` from the run directory.
* :func:`eedi.submit.predict.predict` - the Kaggle notebook's path. Starts from the raw competition CSVs and a
  packaged folder (``eedi package-kaggle``, :mod:`eedi.submit.kaggle`: wheels, the retriever, the reranker, the run's
  config), so the notebook needs nothing but attached datasets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from eedi.config import Config
from eedi.data.artifacts import load_misconceptions, load_pairs
from eedi.data.submission import write_submission
from eedi.errors import MissingInputError
from eedi.evaluation.metrics import candidates_to_lists
from eedi.evaluation.report import build_report
from eedi.layout import TEST, RunLayout
from eedi.submit.predict import choose_reranker, rerank_to_submission

log = logging.getLogger(__name__)


def run(config: Config) -> dict:
    """Rerank the test candidates and write submission.csv (skipped when there is no test.csv)."""
    layout = RunLayout(config.run_dir)
    pairs = load_pairs(layout.root)
    if not (pairs["split"] == "test").any():
        log.info("no test pairs in %s: nothing to submit", config.data.dir)
        build_report(layout.root)
        return {"submission": None, "reason": "no test.csv in data.dir"}
    if not layout.candidates(TEST).exists():
        raise MissingInputError(layout.candidates(TEST), "index")
    candidates = pd.read_parquet(layout.candidates(TEST))
    sample_path = Path(config.data.dir) / "sample_submission.csv"
    sample = pd.read_csv(sample_path) if sample_path.exists() else None
    if not config.reranker.enabled:
        test = pairs[pairs["split"] == "test"]
        out = write_submission(layout.submission, candidates_to_lists(candidates), test, sample=sample)
        build_report(layout.root)
        log.info("submission (retriever ranking, reranker.enabled=false): %s", out)
        return {"submission": str(out), "reranker": None, "rows": int(len(pd.read_csv(out)))}
    name, path = choose_reranker(config)
    out = rerank_to_submission(
        config, path, candidates, pairs, load_misconceptions(layout.root), layout.submission, sample
    )
    build_report(layout.root)
    log.info("submission (%s reranker, %s backend): %s", name, config.infer.backend, out)
    return {"submission": str(out), "reranker": name, "reranker_path": str(path), "rows": int(len(pd.read_csv(out)))}
