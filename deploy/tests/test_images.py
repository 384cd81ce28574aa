"""images/: every Dockerfile passes hadolint and follows the conventions (ARG BASE_IMAGE, pinned requirements, a
reason for system packages, healthchecks), and every image has its own tests folder (images/NAME/tests), where
the image is built with podman and checked running (images/conftest.py holds their shared fixtures)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(ROOT.glob("images/**/Dockerfile"))
HADOLINT = Path(sys.prefix) / "bin" / "hadolint"


def test_every_image_has_a_dockerfile_readme_and_requirements() -> None:
    names = sorted(p.parent.relative_to(ROOT / "images").as_posix() for p in DOCKERFILES)
    assert names == ["gateway", "hub", "notebook", "notebook/cuda", "platform-tests", "tracking"]
    for name in ("gateway", "hub", "notebook", "platform-tests", "tracking"):
        assert (ROOT / "images" / name / "requirements.txt").exists(), name
    assert (ROOT / "images" / "README.md").exists()
    for name in ("gateway", "hub", "notebook", "platform-tests", "tracking"):  # docker-stacks: each image has its tests
        assert list((ROOT / "images" / name / "tests").glob("test_*.py")), f"images/{name}/tests"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.relative_to(ROOT / "images").as_posix())
def test_hadolint(dockerfile: Path) -> None:
    done = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nRUN cd /tmp && echo hi\n")
    done = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode != 0 and "DL3006" in done.stdout  # untagged base image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.relative_to(ROOT / "images").as_posix())
def test_conventions(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+:\S+)$", text, re.M)
    assert base, "ARG BASE_IMAGE with a tagged default"
    assert "FROM ${BASE_IMAGE}" in text
    # A healthcheck (HEALTHCHECK NONE for one-shot images); variants of a cubelab image inherit theirs.
    assert "HEALTHCHECK" in text or base.group(1).startswith("cubelab/"), "no healthcheck"
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every apt-get install has a comment saying why, just above its RUN
        if "apt-get install" in line:
            run = max(j for j in range(i + 1) if lines[j].startswith("RUN"))
            assert lines[run - 1].startswith("#"), f"{dockerfile}: no reason given above line {run + 1}"


@pytest.mark.parametrize("requirements", sorted(ROOT.glob("images/*/requirements.txt")), ids=lambda p: p.parent.name)
def test_requirements_are_pinned(requirements: Path) -> None:
    """Every package has its version here, or in deploy/requirements/constraints.txt (mlflow's one home), which
    every image build reads (test_pins.py)."""
    constraints = ROOT / "deploy" / "requirements" / "constraints.txt"
    pinned_there = {ln.split("==")[0] for ln in constraints.read_text().splitlines() if "==" in ln}
    entries = [ln.strip() for ln in requirements.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert entries
    loose = [e for e in entries if not re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[A-Za-z0-9_.+]+", e)]
    assert not [e for e in loose if e not in pinned_there], loose
