"""The plan as a table on the console: one row per stage, then a FLAG line for each stage that does not fit."""

from __future__ import annotations

from eedi.plan.memory import GB
from eedi.plan.stages import Plan, StagePlan


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / GB:.1f}"


def _count(value: int) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.2f}B"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e3:.1f}K" if value else "-"


def _verdict(stage: StagePlan) -> str:
    if stage.fits is None:
        return "-"
    return "fits" if stage.fits else "FLAG"


COLUMNS = [
    ("stage", lambda s: s.stage),
    ("params", lambda s: _count(s.params)),
    ("precision", lambda s: s.precision),
    ("weights GB", lambda s: _gb(s.weights)),
    ("GPUs", lambda s: str(s.gpus_used)),
    ("LoRA", lambda s: _count(s.lora_params)),
    ("grads+Adam GB", lambda s: _gb(s.train_state) if s.trainable_params else "-"),
    ("act ckpt GB", lambda s: _gb(s.act_ckpt)),
    ("act no-ckpt GB", lambda s: _gb(s.act_no_ckpt)),
    ("KV/seq GB", lambda s: _gb(s.kv_cache)),
    ("peak/GPU GB", lambda s: _gb(s.peak) + ("*" if s.checkpointing else "")),
    ("vLLM share GB", lambda s: _gb(s.reserve)),
    ("", _verdict),
]


def render(plan: Plan) -> str:
    lines = [
        f"eedi plan {plan.config_name}: device {plan.device}, dtype {plan.dtype}",
        "GPUs: " + (plan.gpus.label if plan.gpus else "none visible (CPU): sizes only, nothing compared"),
        "",
    ]
    rows = [[name for name, _ in COLUMNS]] + [[cell(s) for _, cell in COLUMNS] for s in plan.stages]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("peak/GPU: weights + grads/Adam + activations (* with gradient checkpointing, as configured) + CUDA")
    lines.append("context; vLLM rows: weights/GPUs + profiling pass + KV of one max-length sequence (GB = 1e9 bytes).")
    for s in plan.stages:
        lines.append(f"  {s.stage}: {s.model} [{s.arch_source}]; " + "; ".join(s.notes))
    for s in plan.flagged:
        room = plan.gpus.bytes_each if s.reserve is None else s.reserve
        lines.append(
            f"FLAG {s.stage}: needs {s.peak / GB:.1f} GB per GPU on {s.gpus_used} GPU(s), "
            f"has {room / GB:.1f} GB; change {s.fix}"
        )
    if plan.gpus is not None and not plan.flagged:
        lines.append(f"every stage fits {plan.gpus.label}")
    return "\n".join(lines)
