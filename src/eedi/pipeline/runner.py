"""Running stages: one in this process (manifest, skip when current) or all in order, each in its side's interpreter."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from eedi.config import Config, config_to_dict, stage_values
from eedi.errors import ConfigError, EnvironmentMissing, MissingInputError, StageFailed
from eedi.evaluation.report import build_report
from eedi.evaluation.summary import summary_text
from eedi.layout import RunLayout
from eedi.manifest import Manifest, input_hashes
from eedi.pipeline.console import finished_detail, gpu_detail, header, log_tail, stage_line
from eedi.pipeline.registry import SIDES, STAGES, check_sides, get_stage, recorded_upstream, stage_fingerprint
from eedi.plan import Gpus, plan_config, visible_gpus
from eedi.progress import PROGRESS_FD
from eedi.runtime import processes, resolve
from eedi.tracking import log_stage

log = logging.getLogger(__name__)


def run_stage(cfg: Config, name: str, force: bool = False) -> dict:
    """Run one stage in this process, recording it in the manifest; skip it if current.

    A training stage launched by torchrun runs in every process; rank 0 alone writes the manifest (the other
    ranks read it to decide alike whether the stage is current)."""
    stage = get_stage(name)
    check_sides(cfg, [name])  # before anything is written: an engine its side lacks would fail mid-stage
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main = processes(resolve(cfg.runtime), cfg.runtime.ddp_timeout).is_main if stage.distributed else True
    manifest = Manifest(run_dir)
    missing = [u for u in stage.required if manifest.stage(u).get("status") != "done"]
    if missing:
        raise MissingInputError(f"stage {name!r} needs {missing} in {run_dir}: their outputs", missing[0])
    if main:
        manifest.record_run(config_to_dict(cfg), input_hashes(Path(cfg.data.dir)))
    fp = stage_fingerprint(cfg, stage, recorded_upstream(stage, manifest))
    if not force and manifest.is_current(name, fp):
        log.info("stage %s is up to date (fingerprint %s): skipped", name, fp)
        return manifest.stage(name).get("summary", {})
    if not main:
        return stage.function()(cfg) or {}
    t0 = manifest.start(name, fp, stage_values(cfg, name))
    try:
        summary = stage.function()(cfg) or {}
    except BaseException as err:
        manifest = Manifest(run_dir)  # the stage may have written to it (metrics)
        manifest.fail(name, t0, err)
        raise
    manifest = Manifest(run_dir)
    manifest.finish(name, t0, stage.outputs(cfg), summary)
    entry = manifest.stage(name)
    log.info("stage %s done in %.1fs", name, entry["seconds"])
    log_stage(cfg, name, entry["seconds"], entry["peak_rss_mb"], summary)
    return summary


REPO = Path(__file__).resolve().parents[3]


def side_python(side: str) -> str:
    """The interpreter for a side's stages.

    ``EEDI_TRAIN_PYTHON`` / ``EEDI_INFER_PYTHON`` win; else the project's ``.venv-train`` / ``.venv-infer``
    (in the working directory or the checkout this package runs from); else the current interpreter when it
    has the side's packages. Anything else is an :class:`EnvironmentMissing` naming the environment.
    """
    chosen = os.environ.get(f"EEDI_{side.upper()}_PYTHON")
    if chosen:
        if not Path(chosen).exists():
            raise EnvironmentMissing(f"EEDI_{side.upper()}_PYTHON={chosen} does not exist")
        return chosen
    for root in dict.fromkeys([Path.cwd(), REPO]):
        # absolute(), not resolve(): a venv's python is a symlink, and resolving it leaves the venv
        candidate = (root / SIDES[side].environment / "bin" / "python").absolute()
        if candidate.exists():
            return str(candidate)
    marker = SIDES[side].packages[0]  # a package only this side has: it tells the current interpreter's side
    if importlib.util.find_spec(marker) is not None:
        return sys.executable
    raise EnvironmentMissing(
        f"the {side} stages need the {side} environment ({SIDES[side].environment}, with {marker}): "
        f"run `make setup`, or set EEDI_{side.upper()}_PYTHON to its python"
    )


def _stream(source, log_file, echo) -> None:
    """Copy a stage's output into its log (and to the console with -v), as it comes."""
    for chunk in iter(lambda: source.read1(65536), b""):
        log_file.write(chunk)
        log_file.flush()
        if echo is not None:
            echo.write(chunk)
            echo.flush()


def _run_logged(cmd: list[str], log_path: Path, verbose: bool, progress: bool = True) -> int:
    """Run a stage process with its output in ``log_path``; its progress bars go to our stderr (``progress``;
    else to the log: torchrun starts its workers with every inherited descriptor closed)."""
    progress_fd = os.dup(sys.stderr.fileno())
    env = dict(os.environ)
    if progress:
        env[PROGRESS_FD] = str(progress_fd)
    else:
        env.pop(PROGRESS_FD, None)
    try:
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n===== {' '.join(cmd)}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(progress_fd,), env=env
            )
            echo = sys.stdout.buffer if verbose else None
            reader = threading.Thread(target=_stream, args=(proc.stdout, log_file, echo), daemon=True)
            reader.start()
            try:
                code = proc.wait()
            except KeyboardInterrupt:
                proc.wait()  # the stage got the same SIGINT; let it write its manifest entry
                raise
            reader.join()
            return code
    finally:
        os.close(progress_fd)


def nproc_per_node(cfg: Config) -> int:
    """Training processes per machine: ``runtime.nproc_per_node``, else every visible GPU (1 on a CPU)."""
    if cfg.runtime.nproc_per_node is not None:
        return cfg.runtime.nproc_per_node
    if cfg.runtime.device == "cpu":
        return 1
    import torch  # the runner process is on the train side or the infer side: both have torch

    return max(1, torch.cuda.device_count())


def stage_command(python: str, stage_name: str, distributed: bool, nproc: int) -> list[str]:
    """How ``eedi run`` starts a stage: ``python -m eedi <stage>``, under torchrun (one process per GPU on this
    machine, a free local rendezvous port) for a training stage when ``nproc`` > 1."""
    if distributed and nproc > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        return [python, *launcher, "-m", "eedi", stage_name]
    return [python, "-m", "eedi", stage_name]


def planned_gpu_peaks(cfg: Config, gpus: Gpus | None) -> dict[str, float]:
    """``eedi plan``'s per-GPU peak of each stage (bytes), for the stage lines; empty without GPUs."""
    if gpus is None:
        return {}
    try:
        return {s.stage: s.peak for s in plan_config(cfg, gpus).stages}
    except ConfigError as err:  # a model the plan has no architecture for: run anyway, without the column
        log.warning("no plan beside the measured GPU peaks: %s", err)
        return {}


def run_all(
    config_path: str | None,
    overrides: list[str],
    cfg: Config,
    force: bool = False,
    stages: list[str] | None = None,
    verbose: bool = False,
) -> None:
    """Run every built stage in order, each in a fresh process of its side's interpreter.

    A fresh process per stage gives honest per-stage peak memory, frees model memory
    between stages, and lets the two sides use their own environments. Each stage's output goes to
    ``run_dir/logs/<stage>.log`` (also to the console with ``verbose``); the console shows one line as each
    stage starts and ends, the progress bars, and at the end the summary table.
    """
    unknown = sorted(set(stages or []) - {s.name for s in STAGES})
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; stages: {[s.name for s in STAGES]}")
    selected = [s for s in STAGES if stages is None or s.name in stages]
    check_sides(cfg, [s.name for s in selected])
    pythons = {side: side_python(side) for side in dict.fromkeys(s.side for s in selected)}
    nproc = nproc_per_node(cfg)
    layout = RunLayout(cfg.run_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    print(header(config_path, cfg, len(selected)), flush=True)
    planned = planned_gpu_peaks(cfg, visible_gpus())
    for index, stage in enumerate(selected, start=1):
        launched = stage.distributed and nproc > 1
        cmd = stage_command(pythons[stage.side], stage.name, stage.distributed, nproc)
        if config_path:
            cmd += ["--config", str(config_path)]
        if force:
            cmd.append("--force")
        cmd += overrides
        started_before = Manifest(layout.root).stage(stage.name).get("started")
        print(
            stage_line(
                index,
                len(selected),
                stage.name,
                "...",
                f"{stage.side} side{f', {nproc} processes' if launched else ''}, log {layout.log(stage.name)}",
            ),
            flush=True,
        )
        code = _run_logged(cmd, layout.log(stage.name), verbose, progress=not launched)
        entry = Manifest(layout.root).stage(stage.name)
        if code != 0:
            print(stage_line(index, len(selected), stage.name, "FAILED", f"exit {code}"), flush=True)
            if not verbose:
                print(log_tail(layout.log(stage.name)), file=sys.stderr, flush=True)
            raise StageFailed(
                f"stage {stage.name} failed (exit {code}); its log: {layout.log(stage.name)}. "
                "Fix the cause and re-run: finished stages are skipped"
            )
        if entry.get("started") == started_before and entry.get("status") == "done":
            print(stage_line(index, len(selected), stage.name, "skipped", "(unchanged)"), flush=True)
        else:
            detail = finished_detail(entry, stage.name) + gpu_detail(entry, planned.get(stage.name))
            print(stage_line(index, len(selected), stage.name, "done", detail), flush=True)
    if layout.report.exists():
        # evaluate rendered it before infer ran: render again so the timings table includes every stage
        build_report(layout.root)
    print("\n" + summary_text(layout.root), flush=True)
