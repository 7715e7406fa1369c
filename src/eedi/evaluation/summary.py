"""The run summary: per fold, every model's MAP@25 (mix), MAP@25 seen / unseen / all, recall@25; each stage's time.

The headline is ``MAP@25 (mix)`` (:func:`eedi.evaluation.metrics.mix_map`): the competition's test set holds about
three pairs of an unseen misconception to one of a seen one, validation folds far fewer.

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
                        _num(values.get("map@25_mix")),
                        _num(values.get("map@25")),
                        _num(values.get("map@25_seen")),
                        _num(values.get("map@25_unseen")),
                        _num(values.get("recall@25")),
                        str(values.get("n", "")) if fold != "mean" else "",
                    ]
                )
    return rows


def _blocks(metrics: dict) -> list[dict]:
    return [v for fold in metrics.values() if isinstance(fold, dict) for v in fold.values() if isinstance(v, dict)]


def _no_validation_folds(manifest: dict) -> bool:
    folds = (manifest.get("config") or {}).get("folds") or {}
    return "use" in folds and not folds["use"]


HEADLINE_KEYS = ("map@25_mix", "map@25", "map@25_seen", "map@25_unseen", "unseen_share")


def validation_headline(metrics: dict) -> dict | None:
    """The run's validation figures for one line of text: the last model of the pipeline (``MODELS`` order)
    in the mean over folds, else in the only fold; None without validation metrics."""
    folds = [k for k in metrics if k.startswith("fold_")]
    block = metrics.get("mean") or (metrics[folds[0]] if len(folds) == 1 else None)
    if not isinstance(block, dict):
        return None
    for key, label in reversed(MODELS):
        values = block.get(key)
        if isinstance(values, dict) and "map@25" in values:
            return {"model": label, **{k: values[k] for k in HEADLINE_KEYS if k in values}}
    return None


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
        share = next((b["unseen_share"] for b in _blocks(metrics) if "unseen_share" in b), None)
        lines += _table(["fold", "model", "MAP@25 (mix)", "MAP@25", "seen", "unseen", "recall@25", "val pairs"], rows)
        if share is not None:
            lines.append(f"MAP@25 (mix) = {1 - share:g} x seen + {share:g} x unseen (evaluation.unseen_share)")
    elif _no_validation_folds(manifest):
        lines += [
            "no validation metrics: this config has no validation folds (folds.use=[], folds.full_fit=true).",
            "Score it on a local holdout instead:",
            "  eedi make-holdout --data DATA_DIR --out runs/holdout",
            "  eedi run --config CONFIG data.dir=runs/holdout run_dir=runs/holdout-run",
            "  eedi score runs/holdout-run/submission.csv --labels runs/holdout/labels.csv",
        ]
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
