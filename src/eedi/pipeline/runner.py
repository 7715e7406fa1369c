"""Running stages: one in this process (manifest, skip when current) or all in order, each in its side's interpreter."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from eedi.config import Config, config_to_dict
from eedi.errors import MissingInputError, StageFailed
from eedi.evaluation.report import build_report
from eedi.layout import RunLayout
from eedi.manifest import Manifest, input_hashes
from eedi.pipeline.registry import STAGES, get_stage, stage_fingerprint

log = logging.getLogger(__name__)


def run_stage(cfg: Config, name: str, force: bool = False) -> dict:
    """Run one stage in this process, recording it in the manifest; skip it if current."""
    stage = get_stage(name)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir)
    missing = [u for u in stage.required if manifest.stage(u).get("status") != "done"]
    if missing:
        raise MissingInputError(f"stage {name!r} needs {missing} in {run_dir}: their outputs", missing[0])
    manifest.record_run(config_to_dict(cfg), input_hashes(Path(cfg.data.dir)))
    fp = stage_fingerprint(cfg, stage, manifest)
    if not force and manifest.is_current(name, fp):
        log.info("stage %s is up to date (fingerprint %s): skipped", name, fp)
        return manifest.stage(name).get("summary", {})
    t0 = manifest.start(name, fp)
    try:
        summary = stage.function()(cfg) or {}
    except BaseException as err:
        manifest = Manifest(run_dir)  # the stage may have written to it (metrics)
        manifest.fail(name, t0, err)
        raise
    manifest = Manifest(run_dir)
    manifest.finish(name, t0, stage.outputs(cfg), summary)
    log.info("stage %s done in %.1fs", name, manifest.stage(name)["seconds"])
    return summary


def side_python(side: str) -> str:
    return os.environ.get(f"EEDI_{side.upper()}_PYTHON") or sys.executable


def run_all(
    config_path: str | None, overrides: list[str], cfg: Config, force: bool = False, stages: list[str] | None = None
) -> None:
    """Run every built stage in order, each in a fresh process of its side's interpreter.

    A fresh process per stage gives honest per-stage peak memory, frees model memory
    between stages, and lets the two sides use their own environments.
    """
    selected = [s for s in STAGES if stages is None or s.name in stages]
    for stage in selected:
        cmd = [side_python(stage.side), "-m", "eedi", stage.name]
        if config_path:
            cmd += ["--config", str(config_path)]
        if force:
            cmd.append("--force")
        cmd += overrides
        log.info("==> %s (%s side)", stage.name, stage.side)
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise StageFailed(
                f"stage {stage.name} failed (exit {result.returncode}); "
                f"fix the cause and re-run: finished stages are skipped"
            )
    layout = RunLayout(cfg.run_dir)
    if layout.report.exists():
        # evaluate rendered it before infer ran: render again so the timings table includes every stage
        build_report(layout.root)
    for label, path in (("metrics", layout.metrics), ("report", layout.report), ("submission", layout.submission)):
        if path.exists():
            print(f"{label:>10}: {path.resolve()}")
