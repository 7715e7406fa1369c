"""report.html: one self-contained page built from a run's outputs."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import copy_tree

from eedi.evaluation.report import build_report
from eedi.pipeline.registry import STAGES


def check_report(run_dir: Path) -> str:
    page = build_report(run_dir).read_text()
    # self-contained: plots are data URIs, nothing is fetched
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page
    assert page.count('src="data:image/png;base64,') >= 2  # recall@K curve, MAP@25 by subject
    for title in (
        "Metrics per fold",
        "Reranker gain over the retriever",
        "Retriever recall@K",
        "MAP@25 by subject",
        "Seen vs unseen",
        "Quantization",
        "Stage timings and memory",
    ):
        assert title in page, title
    # quantization: the unquantized source first, then each method
    quant = page[page.index("<h2>Quantization</h2>") : page.index("<h2>Stage timings")]
    rows = re.findall(r"<tr>\s*<td>([a-z]+)</td>", quant)
    assert rows[0] == "unquantized" and {"gptq", "awq"} <= set(rows)
    # timings in pipeline order
    timings = page[page.index("<h2>Stage timings") :]
    listed = re.findall(r"<tr>\s*<td>([a-z-]+)</td>", timings)
    assert listed == [s.name for s in STAGES if s.name in listed]
    return page


def test_report_of_the_shared_run(quantized_sample, tmp_path):
    page = check_report(copy_tree(quantized_sample, tmp_path / "run"))
    assert "<td>383</td>" in page  # validation pairs of fold 0, printed as a count


def test_metrics_table_shows_the_mean_of_unequal_folds():
    """Folds of unequal size: the mean row's pair count is a mean of counts, shown rounded."""
    from eedi.evaluation.report import metrics_section

    block = {"map@25": 0.3, "recall@25": 0.7}
    html = metrics_section(
        {"fold_0": {"retriever": {**block, "n": 1220}}, "mean": {"retriever": {**block, "n": 1223.5}}}
    )
    assert "1220" in html and "1224" in html
