"""Experiment tracking (``tracking.report_to``): the Trainers' logs plus every stage's metrics and timings.

* ``none`` - nothing beyond the run directory (the default).
* ``tensorboard`` - event files under ``run_dir/tracking/tensorboard/`` (``tensorboard --logdir ...``).
* ``mlflow`` - a local MLflow file store, ``run_dir/tracking/mlruns`` (``mlflow ui --backend-store-uri ...``),
  unless ``MLFLOW_TRACKING_URI`` is set.
* ``wandb`` - Weights & Biases; ``tracking.wandb_mode=offline`` (the default) writes runs under
  ``run_dir/tracking/wandb`` for a later ``wandb sync``.

The Trainers get the backend through ``report_to`` and the environment variables each integration reads;
:func:`log_stage` records a finished stage's numeric summary, seconds and peak memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from eedi.config import Config
from eedi.layout import RunLayout

log = logging.getLogger(__name__)


def _flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}".replace("@", "_at_")
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _allow_file_store() -> None:
    # MLflow 3 keeps the file store (a folder, no server or database) behind an opt-in; it is what a run
    # directory needs. A user's own MLFLOW_TRACKING_URI (a server or database) is used as given.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def trainer_report_to(config: Config, stage: str) -> list[str]:
    """``report_to`` for a Trainer of ``stage``, after pointing the backend at the run directory."""
    backend = config.tracking.report_to
    if backend == "none":
        return []
    root = RunLayout(config.run_dir).tracking
    if backend == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(root / "tensorboard" / stage)
    elif backend == "mlflow":
        _allow_file_store()
        os.environ.setdefault("MLFLOW_TRACKING_URI", (root / "mlruns").resolve().as_uri())
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", config.tracking.experiment)
        os.environ.setdefault("MLFLOW_RUN_NAME", stage)
    elif backend == "wandb":
        os.environ.setdefault("WANDB_MODE", config.tracking.wandb_mode)
        os.environ.setdefault("WANDB_DIR", str(root))
        os.environ.setdefault("WANDB_PROJECT", config.tracking.experiment)
        os.environ.setdefault("WANDB_NAME", stage)
        (root / "wandb").mkdir(parents=True, exist_ok=True)
    return [backend]


def log_stage(config: Config, stage: str, seconds: float, peak_rss_mb: float, summary: Mapping[str, Any]) -> None:
    """Record one finished stage in the configured tracker (no-op for ``none``)."""
    backend = config.tracking.report_to
    if backend == "none":
        return
    metrics = {"seconds": float(seconds), "peak_rss_mb": float(peak_rss_mb), **_flatten(summary)}
    root = RunLayout(config.run_dir).tracking
    if backend == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter  # lazy: an optional backend, only with report_to=tensorboard

        with SummaryWriter(log_dir=str(root / "tensorboard" / "stages" / stage)) as writer:
            for name, value in metrics.items():
                writer.add_scalar(f"{stage}/{name}", value, 0)
    elif backend == "mlflow":
        import mlflow  # lazy: an optional tracking backend

        _allow_file_store()
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or (root / "mlruns").resolve().as_uri())
        mlflow.set_experiment(config.tracking.experiment)
        with mlflow.start_run(run_name=f"stage:{stage}"):
            mlflow.set_tag("eedi.stage", stage)
            mlflow.set_tag("eedi.run_dir", str(config.run_dir))
            mlflow.log_metrics({name.replace("/", "."): value for name, value in metrics.items()})
    elif backend == "wandb":
        import wandb  # lazy: an optional tracking backend

        (root / "wandb").mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=config.tracking.experiment,
            name=f"stage:{stage}",
            dir=str(root),
            mode=config.tracking.wandb_mode,
            config={"run_dir": str(config.run_dir)},
            reinit=True,
        )
        run.log({f"{stage}/{name}": value for name, value in metrics.items()})
        run.finish()
    log.info("logged stage %s to %s (%d metrics)", stage, backend, len(metrics))
