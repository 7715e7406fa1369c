"""`eedi run` on CUDA: each stage line shows the measured GPU peak beside the plan's (issue 20); CPU unchanged."""

from __future__ import annotations

from conftest import REPO

from eedi.config import load_config
from eedi.manifest import Manifest, peak_gpu_mb
from eedi.pipeline.console import finished_detail, gpu_detail
from eedi.pipeline.runner import planned_gpu_peaks
from eedi.plan import parse_gpus, visible_gpus


def test_stage_line_shows_measured_beside_planned():
    entry = {"seconds": 12.0, "peak_rss_mb": 2048, "peak_gpu_mb": 30000.0, "summary": {}}
    assert gpu_detail(entry, 32.3e9) == "  GPU peak 31.5 GB (plan 32.3)"
    # a vLLM stage: the engine's own process holds its memory, so only the plan is known here
    assert gpu_detail({"summary": {}}, 12.4e9) == "  GPU peak ? GB (plan 12.4)"


def test_cpu_stage_lines_do_not_change():
    entry = {"seconds": 12.0, "peak_rss_mb": 2048, "summary": {}}
    assert gpu_detail(entry, None) == ""
    assert finished_detail(entry, "prepare") + gpu_detail(entry, None) == finished_detail(entry, "prepare")
    if visible_gpus() is None:
        assert planned_gpu_peaks(load_config(REPO / "configs" / "qwen2.5-14b.yaml"), visible_gpus()) == {}
        assert peak_gpu_mb() is None


def test_planned_peaks_by_stage_name():
    peaks = planned_gpu_peaks(load_config(REPO / "configs" / "qwen2.5-14b.yaml"), parse_gpus("8x80GB"))
    assert {"synthesize", "train-retriever", "index", "train-reranker", "quantize", "infer"} <= set(peaks)
    assert 25e9 < peaks["train-retriever"] < 80e9
    # a model the plan cannot size: the run goes on without the column
    assert planned_gpu_peaks(load_config(None, ["retriever.backbone=acme/unknown"]), parse_gpus("1x80GB")) == {}


def test_manifest_records_no_gpu_peak_for_a_cpu_stage(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.record_run({}, {})
    t0 = manifest.start("prepare", "fp")
    manifest.finish("prepare", t0, [], {})
    entry = Manifest(tmp_path).stage("prepare")
    assert entry["status"] == "done" and ("peak_gpu_mb" in entry) == (peak_gpu_mb() is not None)
