"""The run summary: per fold, every model's MAP@25, recall@25 and unseen MAP@25; then each stage's time.

Printed at the end of ``eedi run`` and again, at any time, by ``eedi summary RUN_DIR``. Read back from
``metrics.json`` and ``manifest.json`` only.
"""

from __future__ import annotations

from pathlib import Path

from eedi.errors import MissingInputError
from eedi.fileio import read_json
from eedi.layout import RunLayout

# metrics.json model blocks, in pipeline order, with the name the table shows
MODELS = (
    ("retriever", "retriever"),
    ("reranker", "reranker"),
    ("reranker_unquantized", "reranker (unquantized)"),
    ("reranker_gptq", "reranker gptq"),
    ("reranker_awq", "reranker awq"),
)


def _num(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:  # the first two columns are names: left-aligned; numbers right-aligned
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]


def metric_rows(metrics: dict) -> list[list[str]]:
    """One row per (fold, model) that metrics.json holds, folds in order, then the mean over folds."""
    folds = sorted((k for k in metrics if k.startswith("fold_")), key=lambda k: int(k.split("_")[1]))
    rows = []
    for fold in [*folds, "mean"]:
        block = metrics.get(fold) or {}
        for key, label in MODELS:
            values = block.get(key)
            if isinstance(values, dict) and "map@25" in values:
                rows.append(
                    [
                        fold,
                        label,
                        _num(values.get("map@25")),
                        _num(values.get("recall@25")),
                        _num(values.get("map@25_unseen")),
                        str(values.get("n", "")) if fold != "mean" else "",
                    ]
                )
    return rows


def stage_rows(manifest: dict) -> list[list[str]]:
    stages = manifest.get("stages", {})
    order = sorted(stages, key=lambda name: stages[name].get("started", ""))  # the order they ran in
    return [
        [
            name,
            stages[name].get("status", "?"),
            _num(stages[name].get("seconds"), 1),
            _num((stages[name].get("peak_rss_mb") or 0) / 1024, 2) if stages[name].get("peak_rss_mb") else "-",
        ]
        for name in order
    ]


def summary_text(run_dir: str | Path) -> str:
    """The summary table of a run directory (what ``eedi summary`` prints)."""
    layout = RunLayout(run_dir)
    if not layout.manifest.exists():
        raise MissingInputError(layout.manifest, "run", "not a run directory")
    metrics = read_json(layout.metrics, default={}) or {}
    manifest = read_json(layout.manifest, default={}) or {}
    lines = [f"Summary of {layout.root}", ""]
    rows = metric_rows(metrics)
    if rows:
        lines += _table(["fold", "model", "MAP@25", "recall@25", "MAP@25 unseen", "val pairs"], rows)
    else:
        lines.append("no metrics yet (the index stage writes the first)")
    lines += ["", *_table(["stage", "status", "seconds", "peak RSS GB"], stage_rows(manifest)), ""]
    for label, path in (
        ("report", layout.report),
        ("submission", layout.submission),
        ("metrics", layout.metrics),
        ("logs", layout.logs),
    ):
        if path.exists():
            lines.append(f"{label:>10}: {path}")
    return "\n".join(lines)
