"""The package's shape: scripts follow the stage registry, run-directory paths come from one object,
and user errors reach the command line as one line with exit code 2 (no traceback)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from eedi.cli import main
from eedi.config import load_config
from eedi.layout import RunLayout
from eedi.pipeline.registry import STAGES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "eedi"

# Pieces of the run directory that only eedi.layout may spell (as an operand of the `/` path operator).
RUN_DIR_PIECES = {
    "candidates",
    "merged",
    "adapter",
    "checkpoints",
    "reranked",
    "quantized",
    "pairs.parquet",
    "misconceptions.parquet",
    "folds.csv",
    "prepare_summary.json",
    "metrics.json",
    "report.html",
    "manifest.json",
    "train_log.jsonl",
    "train_info.json",
    "train_windows.parquet",
    "train_synthetic.csv",
    "rejected.csv",
    "state.json",
    "labels.sqlite",
    "logs",
    "synthetic",
    "submission.csv",
}


def test_numbered_scripts_follow_the_registry():
    scripts = sorted((REPO / "scripts").glob("[0-9][0-9]_*.py"))
    assert [p.stem for p in scripts] == [f"{i:02d}_{s.name.replace('-', '_')}" for i, s in enumerate(STAGES)]
    for i, (path, stage) in enumerate(zip(scripts, STAGES)):
        text = path.read_text()
        assert f'main(["{stage.name}", *sys.argv[1:]])' in text
        assert f"Stage {i} of {len(STAGES) - 1}, `{stage.name}`" in text


def _path_pieces(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in RUN_DIR_PIECES:
                    found.append((node.lineno, side.value))
                if (
                    isinstance(side, ast.JoinedStr)
                    and side.values
                    and isinstance(side.values[0], ast.Constant)
                    and str(side.values[0].value).startswith(("fold_", "reranker-"))
                ):
                    found.append((node.lineno, ast.unparse(side)))
    return found


def test_run_directory_paths_are_spelled_only_in_the_layout():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "layout.py":
            continue
        offenders += [
            f"{path.relative_to(REPO)}:{line}: {piece}" for line, piece in _path_pieces(ast.parse(path.read_text()))
        ]
    assert not offenders, "use eedi.layout.RunLayout instead:\n" + "\n".join(offenders)


def test_the_layout_check_catches_a_spelled_path():
    assert sorted(_path_pieces(ast.parse('run_dir / "candidates" / f"fold_{k}.parquet"'))) == [
        (1, "candidates"),
        (1, "f'fold_{k}.parquet'"),
    ]


def test_declared_outputs_live_in_the_run_directory(tmp_path):
    cfg = load_config(REPO / "configs" / "cpu.yaml", [f"run_dir={tmp_path / 'run'}", "folds.full_fit=true"])
    for stage in STAGES:
        for output in stage.outputs(cfg):
            assert Path(output).is_relative_to(RunLayout(cfg.run_dir).root), (stage.name, output)
    infer = next(s for s in STAGES if s.name == "infer")
    assert RunLayout(cfg.run_dir).submission in infer.outputs(cfg)  # the sample has a test.csv


def test_missing_upstream_names_the_stage_to_run(tmp_path, capsys):
    code = main(["index", "--config", str(REPO / "configs" / "cpu.yaml"), f"run_dir={tmp_path / 'empty'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "run `eedi train-retriever` first" in err


def test_user_error_in_a_subprocess_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eedi",
            "evaluate",
            "--config",
            str(REPO / "configs" / "cpu.yaml"),
            f"run_dir={tmp_path / 'empty'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "run `eedi index` first" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["config-docs", "--check"]])
def test_config_reference_is_current(argv, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(argv) == 0, "docs/config.md is stale: run `eedi config-docs --out docs/config.md`"


def test_a_stage_process_imports_no_model_library_before_its_stage_runs():
    """Every stage is its own `python -m eedi <stage>` process: the command line imports a stage's libraries only
    when that stage runs, so a cheap stage (prepare, evaluate) does not pay for transformers and peft."""
    code = (
        "import sys; import eedi.cli, eedi.pipeline.runner; "
        "print(sorted(m for m in ('transformers', 'peft', 'sentence_transformers', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
