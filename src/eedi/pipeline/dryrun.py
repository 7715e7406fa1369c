"""``eedi run --dry-run``: which stages a run would execute, and why, without running any.

A stage runs when its fingerprint (:func:`eedi.pipeline.registry.stage_fingerprint`) differs from the one the
manifest recorded, it never finished, or its outputs are gone. The manifest also records the config values each
stage's fingerprint was made of, so the reason names the keys: ``reranker.lr changed (0.0001 -> 0.0002)``. For
the model stages it says whether the models would be retrained or reused: only keys declared with ``trains=True``
(:func:`eedi.config.affects`) and changed training files retrain a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eedi.config import MODEL_STAGES, Config, key_effects, stage_values
from eedi.manifest import Manifest, input_hashes
from eedi.pipeline.registry import STAGES, check_sides, stage_fingerprint


@dataclass
class StagePlan:
    name: str
    runs: bool
    reasons: list[str] = field(default_factory=list)
    models: str | None = None
    """Model stages that run: whether their models would be retrained or reused."""


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _changed_keys(recorded: dict, current: dict) -> list[str]:
    return [
        f"{key} changed ({_short(recorded.get(key, '-'))} -> {_short(current.get(key, '-'))})"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


def plan(cfg: Config, stages: list[str] | None = None, force: bool = False) -> list[StagePlan]:
    """What ``eedi run`` with this config (``--stages``, ``--force``) would do, stage by stage. Reads the
    manifest only."""
    check_sides(cfg, stages)
    manifest = Manifest(Path(cfg.run_dir))
    effects = key_effects()
    predicted: dict[str, str | None] = {}
    plans = []
    for stage in STAGES:
        entry = manifest.stage(stage.name)
        if stages is not None and stage.name not in stages:
            predicted[stage.name] = entry.get("fingerprint")  # not run: later stages read what is there
            continue
        upstream = {u: predicted.get(u, manifest.stage(u).get("fingerprint")) for u in stage.upstream}
        fp = stage_fingerprint(cfg, stage, upstream)
        values = stage_values(cfg, stage.name)
        changed: list[str] = []
        reasons: list[str] = []
        if force:
            reasons.append("--force")
        if entry.get("status") != "done":
            reasons.append("never ran" if not entry else f"last run {entry.get('status')}")
        elif entry.get("fingerprint") != fp:
            recorded = entry.get("keys")
            if recorded is not None:
                changed = [k for k in values if recorded.get(k) != values[k]]
                reasons += _changed_keys(recorded, values)
            moved = [u for u in stage.upstream if upstream[u] != manifest.stage(u).get("fingerprint")]
            reasons += [f"upstream {u} re-runs" for u in moved]
            if stage.name == "prepare" and manifest.data.get("inputs") != input_hashes(Path(cfg.data.dir)):
                reasons.append(f"input files in {cfg.data.dir} changed")
            if not reasons:
                reasons.append("fingerprint changed (the manifest predates per-key records)")
        elif not manifest.is_current(stage.name, fp):
            reasons.append("outputs missing")
        runs = bool(reasons)
        predicted[stage.name] = fp
        models = None
        if runs and stage.name in MODEL_STAGES:
            retrain = [k for k in changed if effects[k].retrains(stage.name)]
            if force or entry.get("status") != "done" or "keys" not in entry:
                models = "trains the models whose training config or files differ from theirs"
            elif retrain:
                models = f"retrains its models ({', '.join(retrain)})"
            elif any(r.startswith("upstream") for r in reasons):
                models = "retrains a model only where its training files change"
            else:
                models = "reuses its models (only how they are used changed)"
        plans.append(StagePlan(stage.name, runs, reasons, models))
    return plans


def dry_run_text(cfg: Config, stages: list[str] | None = None, force: bool = False) -> str:
    plans = plan(cfg, stages, force)
    width = max(len(p.name) for p in plans) if plans else 0
    lines = [f"dry run in {cfg.run_dir}: {sum(p.runs for p in plans)} of {len(plans)} stages would run"]
    for p in plans:
        if not p.runs:
            lines.append(f"  {p.name:<{width}}  current: skipped")
            continue
        detail = "; ".join(p.reasons + ([p.models] if p.models else []))
        lines.append(f"  {p.name:<{width}}  runs: {detail}")
    return "\n".join(lines)
