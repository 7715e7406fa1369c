"""``run_dir/report.html``: one self-contained page (plots embedded as PNG data URIs).

Everything is read back from the stage outputs, so the report can be re-rendered for any
run directory at any time (``eedi report --config ... run_dir=...``):

* retriever recall@K curve           <- candidates/fold_*.parquet (part == "val")
* MAP@25 by subject, seen vs unseen  <- reranked/fold_*.parquet (or candidates) + pairs.parquet
* reranker gain over the retriever   <- metrics.json
* quantization cost                  <- metrics.json (reranker_<method>) + quantized/summary.json
* stage timings and peak memory      <- manifest.json
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eedi.evaluation.metrics import average_precision_from_rank
from eedi.fileio import read_json, write_text
from eedi.layout import RunLayout, model_name


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")

    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    return df.to_html(index=False, border=0, classes="t", float_format=lambda v: floatfmt.format(v), na_rep="–")


def _val_candidates(run_dir: Path) -> dict[int, pd.DataFrame]:
    out = {}
    for path in RunLayout(run_dir).fold_candidates():
        df = pd.read_parquet(path)
        out[int(path.stem.split("_")[1])] = df[df["part"] == "val"] if "part" in df else df
    return out


def _first_hit_rank(cands: pd.DataFrame, truth: pd.Series, rank_col: str) -> pd.Series:
    """0-based rank of the true misconception per pair (NaN when it is not among the candidates)."""
    merged = cands.merge(truth.rename("truth"), left_on="QuestionId_Answer", right_index=True)
    hits = merged[merged["MisconceptionId"] == merged["truth"]]
    ranks = hits.groupby("QuestionId_Answer")[rank_col].min()
    return ranks.reindex(truth.index)


def recall_curve_section(run_dir: Path, pairs: pd.DataFrame) -> str:

    folds = _val_candidates(run_dir)
    if not folds:
        return "<p>No retriever candidates in this run.</p>"
    truth = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")["MisconceptionId"].astype(int)
    # Figure without pyplot: no global backend or figure registry to manage
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for k, cands in folds.items():
        ranks = _first_hit_rank(cands, truth[truth.index.isin(cands["QuestionId_Answer"])], "rank")
        ks = np.arange(1, int(cands["rank"].max()) + 2)
        ax.plot(ks, [(ranks < x).mean() for x in ks], label=f"fold {k}")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_title("Retriever recall@K (validation pairs)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


# Subjects with fewer validation pairs than this are too noisy to rank; beyond MAX_SUBJECT_BARS bars a plot
# of the real data (over 100 subjects) is unreadable, so it shows the extremes.
MIN_SUBJECT_PAIRS = 10
MAX_SUBJECT_BARS = 24


def subjects_to_plot(
    subject: pd.DataFrame, max_bars: int = MAX_SUBJECT_BARS, min_pairs: int = MIN_SUBJECT_PAIRS
) -> tuple[pd.DataFrame, str]:
    """All subjects when few; else the worst and best ``max_bars // 2`` of those with ``min_pairs`` or more."""
    if len(subject) <= max_bars:
        return subject, ""
    enough = subject[subject["n"] >= min_pairs]
    half = max_bars // 2
    shown = enough if len(enough) <= max_bars else pd.concat([enough.head(half), enough.tail(half)])
    note = (
        f"{len(subject)} subjects: the plot shows the {len(shown)} lowest and highest by retriever MAP@25 among "
        f"the {len(enough)} with at least {min_pairs} validation pairs; the table below lists every subject."
    )
    return shown, note


def by_subject_section(run_dir: Path, pairs: pd.DataFrame, folds_csv: pd.DataFrame | None) -> str:
    truth = pairs.dropna(subset=["MisconceptionId"]).set_index("QuestionId_Answer")
    rows = []
    for k, cands in _val_candidates(run_dir).items():
        reranked_path = RunLayout(run_dir).reranked(model_name(k))
        sources = {"retriever": (cands, "rank")}
        if reranked_path.exists():
            sources["reranker"] = (pd.read_parquet(reranked_path), "final_rank")
        # seen = the misconception occurs in this fold's training part
        seen_ids: set[int] = set()
        if folds_csv is not None:
            train_q = set(folds_csv.loc[folds_csv["fold"] != k, "QuestionId"])
            seen_ids = set(truth.loc[truth["QuestionId"].isin(train_q), "MisconceptionId"].astype(int))
        for stage, (df, rank_col) in sources.items():
            keys = df["QuestionId_Answer"].unique()
            t = truth.loc[truth.index.intersection(keys)]
            ranks = _first_hit_rank(df, t["MisconceptionId"].astype(int), rank_col)
            ap = ranks.map(average_precision_from_rank)
            rows.append(
                pd.DataFrame(
                    {
                        "fold": k,
                        "stage": stage,
                        "SubjectName": t["SubjectName"].values,
                        "ap": ap.values,
                        "seen": t["MisconceptionId"]
                        .astype(int)
                        .isin(seen_ids)
                        .map({True: "seen", False: "unseen"})
                        .values,
                    }
                )
            )
    if not rows:
        return "<p>No candidates to break down.</p>"
    table = pd.concat(rows)
    subject = table.pivot_table(index="SubjectName", columns="stage", values="ap", aggfunc="mean")
    subject["n"] = table[table["stage"] == "retriever"].groupby("SubjectName").size()
    subject = subject.sort_values("retriever")
    shown, note_subjects = subjects_to_plot(subject)
    fig = Figure(figsize=(7, 0.32 * len(shown) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(shown))
    for offset, stage in zip((-0.2, 0.2), [c for c in ("retriever", "reranker") if c in shown]):
        ax.barh(y + offset, shown[stage], height=0.38, label=stage)
    ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(shown.index, shown["n"])], fontsize=8)
    ax.set_xlabel("MAP@25")
    ax.set_title("MAP@25 by subject (validation)" + ("" if len(shown) == len(subject) else ", extremes"))
    ax.legend()
    seen = table.pivot_table(index="seen", columns="stage", values="ap", aggfunc="mean").reset_index()
    seen.insert(1, "n", table[table["stage"] == "retriever"].groupby("seen").size().reindex(seen["seen"]).values)
    note = ""
    if set(seen["seen"]) != {"seen", "unseen"}:
        missing = ({"seen", "unseen"} - set(seen["seen"])).pop()
        note = (
            f'<p class="meta">No {missing} misconceptions among these validation pairs '
            "(folds.mode=unseen holds misconceptions out of training).</p>"
        )
    plot = _png(fig)
    if note_subjects:
        every = subject.reset_index().sort_values("n", ascending=False)
        plot = (
            f'<p class="meta">{html.escape(note_subjects)}</p>'
            + plot
            + f"<details><summary>Every subject ({len(every)})</summary>{_table(every)}</details>"
        )
    return plot + "<h3>Seen vs unseen misconceptions (MAP@25)</h3>" + _table(seen) + note


def metrics_section(metrics: dict) -> str:
    rows = []
    for fold, block in sorted(metrics.items()):
        if not isinstance(block, dict):
            continue
        for stage, values in block.items():
            if isinstance(values, dict) and "map@25" in values:
                rows.append(
                    {
                        "fold": fold,
                        "model": stage,
                        **{
                            k: values.get(k)
                            for k in (
                                "map@25_mix",
                                "map@25",
                                "recall@25",
                                "map@25_seen",
                                "map@25_unseen",
                                "size_ratio",
                                "seconds_per_window",
                                "n",
                            )
                        },
                    }
                )
    if not rows:
        return "<p>No metrics yet.</p>"
    df = pd.DataFrame(rows).dropna(axis=1, how="all")
    if "n" in df:
        df["n"] = df["n"].round().astype("Int64")  # a count, not a float (the mean row's is a mean of counts)
    out = _table(df)
    shares = {
        b.get("unseen_share")
        for f in metrics.values()
        if isinstance(f, dict)
        for b in f.values()
        if isinstance(b, dict) and "unseen_share" in b
    }
    if len(shares) == 1:
        share = shares.pop()
        out += (
            f"<p>map@25_mix = {1 - share:g} &times; seen + {share:g} &times; unseen"
            " (<code>evaluation.unseen_share</code>):"
            " MAP@25 at the competition's test mix, about three pairs of an unseen misconception to one seen.</p>"
        )
    gains = []
    for fold, block in sorted(metrics.items()):
        if isinstance(block, dict) and "retriever" in block and "reranker" in block:
            r, rr = block["retriever"], block["reranker"]
            row = {"fold": fold, "retriever": r["map@25"], "reranker": rr["map@25"], "gain": rr["map@25"] - r["map@25"]}
            if "map@25_mix" in r and "map@25_mix" in rr:
                row["gain (mix)"] = rr["map@25_mix"] - r["map@25_mix"]
            gains.append(row)
    if gains:
        out += "<h3>Reranker gain over the retriever</h3>" + _table(pd.DataFrame(gains))
    return out


def quantization_section(summary: dict) -> str:
    """One row per model (the unquantized source first): size, ranking quality, agreement, speed."""
    rows = []
    models = summary.get("models", {})
    for method in sorted(models, key=lambda name: (name != "unquantized", name)):
        m = models[method]
        rows.append(
            {
                "model": method,
                "size (MB)": m.get("size_bytes", float("nan")) / 1e6,
                "size ratio": m.get("size_ratio"),
                "MAP@25": m.get("map@25"),
                "top-1 agreement": m.get("top1_agreement"),
                "label-prob. MAE": m.get("score_mae"),
                "s/window": m.get("seconds_per_window"),
                "quantize s": m.get("quantize_seconds"),
            }
        )
    if not rows:
        return "<p>No quantized models in this run.</p>"
    meta = (
        f"source <code>{html.escape(str(summary.get('source_dir')))}</code> · scheme {summary.get('scheme')}"
        f" · group size {summary.get('group_size')} · {summary.get('calibration_prompts')} calibration prompts"
        f" · {summary.get('eval_pairs')} validation pairs of fold {summary.get('eval_fold')}"
        f" · reloaded with {summary.get('backend')}"
    )
    return f'<p class="meta">{meta}</p>' + _table(pd.DataFrame(rows).dropna(axis=1, how="all"), "{:.3f}")


def timings_section(manifest: dict) -> str:
    stages = manifest.get("stages", {})
    if not stages:
        return "<p>No stages recorded.</p>"
    order = sorted(stages, key=lambda name: stages[name].get("started", ""))  # the order they ran in
    df = pd.DataFrame(
        [
            {
                "stage": name,
                "status": stages[name].get("status"),
                "seconds": stages[name].get("seconds"),
                "peak RSS (MB)": stages[name].get("peak_rss_mb"),
            }
            for name in order
            if name in stages
        ]
    )
    return _table(df, "{:.1f}")


def build_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    manifest = read_json(layout.manifest, default={}) or {}
    metrics = read_json(layout.metrics, default={}) or {}
    pairs = pd.read_parquet(layout.pairs) if layout.pairs.exists() else None
    folds_csv = pd.read_csv(layout.folds) if layout.folds.exists() else None
    quant = read_json(layout.quantized_summary, default=None)
    sections = [("Metrics per fold", metrics_section(metrics))]
    if pairs is not None:
        sections.append(("Retriever recall@K", recall_curve_section(run_dir, pairs)))
        sections.append(("MAP@25 by subject", by_subject_section(run_dir, pairs, folds_csv)))
    if quant:
        sections.append(("Quantization", quantization_section(quant)))
    sections.append(("Stage timings and memory", timings_section(manifest)))
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n{content}" for title, content in sections)
    commit = html.escape(str(manifest.get("git_commit")))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>eedi report: {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table.t {{ border-collapse: collapse; font-size: 0.9em; }}
table.t td, table.t th {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
h2 {{ border-bottom: 2px solid #444; padding-bottom: 0.2em; margin-top: 1.6em; }}
img {{ max-width: 100%; }}
.meta {{ color: #666; font-size: 0.85em; }}
</style></head><body>
<h1>eedi run report</h1>
<p class="meta">run dir <code>{html.escape(str(run_dir))}</code> · commit <code>{commit}</code> ·
data <code>{html.escape(str(manifest.get("config", {}).get("data", {}).get("dir")))}</code></p>
{body}
</body></html>
"""
    return write_text(layout.report, page)
