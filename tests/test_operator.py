"""Running the pipeline as an operator: the console of `eedi run`, the summary, finding the environments,
experiment tracking, `eedi download` and the report at real-data scale."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from eedi.cli import main
from eedi.config import load_config
from eedi.errors import DataError, DownloadError, EnvironmentMissing
from eedi.evaluation.report import subjects_to_plot
from eedi.evaluation.summary import summary_text, validation_headline
from eedi.layout import RunLayout
from eedi.pipeline import runner
from eedi.tracking import log_stage

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cpu.yaml"
FAST_STAGES = "prepare,synthesize,train-retriever,index,evaluate"
# Lines that belong in a stage's log, not on the console: vLLM engine logs, Trainer log dicts, library
# logging (transformers, sentence-transformers, llm-compressor) and our own INFO lines.
NOISE = re.compile(r"\(EngineCore|\{'loss'|\{'train_runtime'| INFO | WARNING |GPTQ \||METRIC")


@pytest.fixture
def small_kaggle(tmp_path, sample_dir) -> Path:
    out = tmp_path / "small"
    out.mkdir()
    pd.read_csv(sample_dir / "train.csv").head(120).to_csv(out / "train.csv", index=False)
    for name in ("misconception_mapping.csv", "test.csv", "sample_submission.csv"):
        (out / name).write_bytes((sample_dir / name).read_bytes())
    return out


def _run(run_dir: Path, data_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "eedi",
        "run",
        "--config",
        str(CONFIG),
        "--stages",
        FAST_STAGES,
        f"run_dir={run_dir}",
        f"data.dir={data_dir}",
        "synthetic.enabled=false",
        "retriever.max_steps=4",
        "retriever.save_steps=4",
        "retriever.hard_negative_refresh_steps=4",
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


@pytest.mark.slow
def test_console_shows_stage_lines_and_summary_and_no_library_logs(tmp_path, small_kaggle):
    """Typed as the README shows, with no EEDI_* variable: both sides run in their environments, the console
    shows one line per stage start and end and the summary, the logs hold the library output."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    project_envs = all((REPO / env / "bin" / "python").exists() for env in (".venv-train", ".venv-infer"))
    env = {k: v for k, v in os.environ.items() if not (project_envs and k.startswith("EEDI_"))}
    run_dir = tmp_path / "run"
    quiet = _run(run_dir, small_kaggle, env=env)
    assert quiet.returncode == 0, quiet.stdout[-3000:] + quiet.stderr[-3000:]
    out = quiet.stdout
    assert out.splitlines()[0].startswith("eedi run  config ") and "device cpu (" in out.splitlines()[0]
    for i, name in enumerate(FAST_STAGES.split(","), start=1):
        assert re.search(rf"^\[{i}/5\] {re.escape(name)} +\.\.\. ", out, re.M), name
        assert re.search(rf"^\[{i}/5\] {re.escape(name)} +done +\d+ s", out, re.M), name
    index_line = (
        r"^\[4/5\] index +done .*fold_0 MAP@25 \(mix\) (\?|[01]\.\d{3}) MAP@25 [01]\.\d{3} recall@25 [01]\.\d{3}"
    )
    assert re.search(index_line, out, re.M)
    assert "fold_0  retriever" in out and "MAP@25 (mix)" in out  # the summary table
    assert not _noise(out) and not _noise(quiet.stderr), _noise(out + quiet.stderr)
    # ... while the stage logs hold the library output in full
    assert "'loss'" in RunLayout(run_dir).log("train-retriever").read_text()
    if project_envs:  # found without variables: the infer side ran in .venv-infer
        stages = json.loads(RunLayout(run_dir).manifest.read_text())["stages"]
        assert stages["synthesize"]["python"] == str(REPO / ".venv-infer" / "bin" / "python")
        assert stages["train-retriever"]["python"] == str(REPO / ".venv-train" / "bin" / "python")

    again = _run(run_dir, small_kaggle)
    assert again.returncode == 0
    assert len(re.findall(r"skipped +\(unchanged\)", again.stdout)) == 5

    # -v streams the stage logs; one step fewer retrains the retriever (tracking.report_to changes no fingerprint)
    verbose = _run(run_dir, small_kaggle, "-v", "retriever.max_steps=3", "tracking.report_to=tensorboard")
    assert verbose.returncode == 0
    assert any("'loss'" in line for line in _noise(verbose.stdout)), "-v streams the Trainer's log lines"
    trainer_events = list((RunLayout(run_dir).tracking / "tensorboard" / "train-retriever").rglob("events.*"))
    assert trainer_events, "the Trainer wrote no TensorBoard event file"
    events = EventAccumulator(str(trainer_events[0].parent))
    events.Reload()
    assert any("loss" in tag for tag in events.Tags()["scalars"])
    assert (RunLayout(run_dir).tracking / "tensorboard" / "stages" / "index").is_dir()

    printed = subprocess.run([sys.executable, "-m", "eedi", "summary", str(run_dir)], capture_output=True, text=True)
    assert printed.returncode == 0 and printed.stdout.strip() == summary_text(run_dir).strip()


@pytest.mark.slow
def test_a_failing_stage_prints_its_log_tail_and_exits_2(tmp_path, small_kaggle):
    result = _run(tmp_path / "run", small_kaggle, "retriever.backbone=models/no-such-model")
    assert result.returncode == 2
    assert re.search(r"^\[3/5\] train-retriever +FAILED +exit 2", result.stdout, re.M)
    assert "no-such-model" in result.stderr  # the tail of logs/train-retriever.log
    assert "Traceback" not in result.stderr


def test_side_python_prefers_the_variable_then_the_project_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "REPO", tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EEDI_INFER_PYTHON", sys.executable)
    assert runner.side_python("infer") == sys.executable
    monkeypatch.setenv("EEDI_INFER_PYTHON", str(tmp_path / "missing" / "python"))
    with pytest.raises(EnvironmentMissing, match="EEDI_INFER_PYTHON=.*does not exist"):
        runner.side_python("infer")
    monkeypatch.delenv("EEDI_INFER_PYTHON")
    monkeypatch.delenv("EEDI_TRAIN_PYTHON", raising=False)
    monkeypatch.setitem(runner.SIDES, "infer", replace(runner.SIDES["infer"], packages=("a_package_nobody_has",)))
    with pytest.raises(EnvironmentMissing, match=r"infer environment \(\.venv-infer.*make setup"):
        runner.side_python("infer")
    python = tmp_path / ".venv-infer" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    assert runner.side_python("infer") == str(python)  # not resolved through the symlink


def test_summary_leads_with_the_mix_and_explains_a_run_without_folds(tmp_path):
    layout = RunLayout(tmp_path / "cv")
    layout.root.mkdir()
    block = {"n": 8, "map@25": 0.5, "map@25_seen": 0.8, "map@25_unseen": 0.2, "recall@25": 0.9}
    block.update({"map@25_mix": 0.35, "unseen_share": 0.75})
    layout.manifest.write_text(json.dumps({"config": {"folds": {"use": [0]}}, "stages": {}}))
    layout.metrics.write_text(json.dumps({"fold_0": {"retriever": block}}))
    text = summary_text(layout.root)
    header = next(line for line in text.splitlines() if line.startswith("fold "))
    assert header.split()[2:5] == ["MAP@25", "(mix)", "MAP@25"]  # the mix first, plain MAP@25 beside it
    assert re.search(r"fold_0 +retriever +0\.3500 +0\.5000 +0\.8000 +0\.2000 +0\.9000 +8", text)
    assert "MAP@25 (mix) = 0.25 x seen + 0.75 x unseen" in text
    assert validation_headline({"fold_0": {"retriever": block}})["map@25_mix"] == 0.35

    full_fit = RunLayout(tmp_path / "full")
    full_fit.root.mkdir()
    full_fit.manifest.write_text(json.dumps({"config": {"folds": {"use": [], "full_fit": True}}, "stages": {}}))
    text = summary_text(full_fit.root)
    assert "no validation folds" in text and "eedi make-holdout" in text and "eedi score" in text
    assert "no metrics yet" not in text


def test_summary_of_a_folder_that_is_no_run_is_one_error(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_subject_plot_keeps_the_extremes_of_many_subjects():
    subject = pd.DataFrame(
        {"retriever": [i / 150 for i in range(150)], "n": [5 if i % 3 == 0 else 20 for i in range(150)]},
        index=[f"subject {i}" for i in range(150)],
    )
    shown, note = subjects_to_plot(subject)
    assert len(shown) == 24 and (shown["n"] >= 10).all()
    assert list(shown.index[:3]) == ["subject 1", "subject 2", "subject 4"]  # the lowest with enough pairs
    assert shown.index[-1] == "subject 149" and "150 subjects" in note
    few, none = subjects_to_plot(subject.head(10))
    assert len(few) == 10 and none == ""


# --------------------------------------------------------------------------- tracking


def _tracking_config(tmp_path: Path, backend: str):
    return load_config(CONFIG, [f"run_dir={tmp_path / 'run'}", f"tracking.report_to={backend}"])


def test_tensorboard_gets_stage_metrics_as_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _tracking_config(tmp_path, "tensorboard")
    log_stage(cfg, "index", 12.5, 900.0, {"fold_0": {"map@25": 0.42, "recall@25": 0.8, "n": 100}, "note": "x"})
    folder = RunLayout(cfg.run_dir).tracking / "tensorboard" / "stages" / "index"
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"index/seconds", "index/peak_rss_mb", "index/fold_0/map_at_25"} <= tags
    assert events.Scalars("index/fold_0/map_at_25")[0].value == pytest.approx(0.42)


def test_mlflow_file_store_gets_stage_metrics(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _tracking_config(tmp_path, "mlflow")
    log_stage(cfg, "train-retriever", 30.0, 2000.0, {"fold_0": {"final_map@25": 0.31}})
    store = RunLayout(cfg.run_dir).tracking / "mlruns"
    mlflow.set_tracking_uri(store.resolve().as_uri())
    runs = mlflow.search_runs(experiment_names=["eedi"])
    assert len(runs) == 1 and runs.iloc[0]["tags.eedi.stage"] == "train-retriever"
    assert runs.iloc[0]["metrics.fold_0.final_map_at_25"] == pytest.approx(0.31)
    assert runs.iloc[0]["metrics.seconds"] == pytest.approx(30.0)


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _tracking_config(tmp_path, "wandb")
    log_stage(cfg, "evaluate", 2.0, 500.0, {"mean": {"retriever": {"map@25": 0.4}}})
    runs = list((RunLayout(cfg.run_dir).tracking / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# --------------------------------------------------------------------------- download


def _without_credentials(monkeypatch, tmp_path):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_download_without_credentials_is_one_clear_error(tmp_path, monkeypatch, capsys):
    _without_credentials(monkeypatch, tmp_path)
    assert main(["download", "--out", str(tmp_path / "kaggle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Kaggle credentials") and "--zip" in err and err.count("\n") == 1
    assert not (tmp_path / "kaggle").exists()


def test_download_without_network_is_one_clear_error(tmp_path, monkeypatch):
    """Credentials present, kaggle.com unreachable (this machine has no internet): a DownloadError, no folder."""
    from eedi.data.download import download

    _without_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there: fails fast, offline or not
    with pytest.raises(DownloadError, match="could not download competition .* KAGGLE_USERNAME/KAGGLE_KEY"):
        download(tmp_path / "kaggle")
    assert not (tmp_path / "kaggle").exists()


def _zip(folder: Path, archive: Path, skip: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.glob("*.csv"):
            if path.name != skip:
                zf.write(path, path.name)
    return archive


def test_download_from_a_zip_checks_the_schema(tmp_path, sample_dir, capsys):
    archive = _zip(sample_dir, tmp_path / "eedi.zip")
    assert main(["download", "--out", str(tmp_path / "kaggle"), "--zip", str(archive)]) == 0
    assert "train questions" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "kaggle").iterdir()) == sorted(p.name for p in sample_dir.glob("*.csv"))

    broken = tmp_path / "broken"
    broken.mkdir()
    train = pd.read_csv(sample_dir / "train.csv").drop(columns=["QuestionText"])
    train.to_csv(broken / "train.csv", index=False)
    (broken / "misconception_mapping.csv").write_bytes((sample_dir / "misconception_mapping.csv").read_bytes())
    with pytest.raises(DataError, match=r"broken\.zip: train\.csv.*QuestionText"):
        from eedi.data.download import download

        download(tmp_path / "out2", zip_path=_zip(broken, tmp_path / "broken.zip"))
    assert not (tmp_path / "out2").exists()
    with pytest.raises(DownloadError, match="no misconception_mapping.csv"):
        download(
            tmp_path / "out3", zip_path=_zip(sample_dir, tmp_path / "partial.zip", skip="misconception_mapping.csv")
        )


def test_stage_lines_show_the_mix_only_where_a_fold_has_unseen_pairs():
    from eedi.pipeline.console import stage_headline

    both = {"map@25": 0.5, "map@25_mix": 0.35, "recall@25": 0.9}
    seen_only = {"map@25": 0.47, "recall@25": 1.0}  # the sample's fold 0: every misconception seen in training
    index = stage_headline("index", {"fold_0": both, "fold_1": seen_only})
    assert index == "fold_0 MAP@25 (mix) 0.350 MAP@25 0.500 recall@25 0.900  fold_1 MAP@25 0.470 recall@25 1.000"
    gain = {"retriever_map@25": 0.47, "reranker_map@25": 0.48}
    assert stage_headline("train-reranker", {"folds": {"fold_1": gain}}) == "fold_1 MAP@25 0.470 -> 0.480"
    gain |= {"retriever_map@25_mix": 0.3, "reranker_map@25_mix": 0.31}
    assert stage_headline("train-reranker", {"folds": {"fold_0": gain}}) == (
        "fold_0 MAP@25 (mix) 0.300 -> 0.310  MAP@25 0.470 -> 0.480"
    )
    assert stage_headline("evaluate", {"mean": {"retriever": seen_only}}) == "mean retriever MAP@25 0.470"
    assert "?" not in stage_headline("quantize", {"gptq": seen_only})
