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


def test_an_image_is_rebuilt_exactly_when_what_it_copies_changes(tmp_path: Path) -> None:
    """The content digest that lets a build be skipped (podman_images.content_digest): it follows the Dockerfile,
    the files its COPY lines take after .dockerignore and the build arguments; not mounts or other files."""
    import podman_images  # deploy/tests/podman_images.py

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "__pycache__").mkdir()
    (tmp_path / "app" / "__pycache__" / "main.pyc").write_text("x")
    (tmp_path / "notes.txt").write_text("not copied\n")
    (tmp_path / ".dockerignore").write_text("*\n!app\n**/__pycache__\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY app \\\n  /app\n")
    args = ("-f", str(tmp_path / "Dockerfile"), "--build-arg", "X=1", str(tmp_path))

    def digest(*extra: str) -> str:
        return podman_images.content_digest((*extra, *args))

    first = digest()
    assert [p.name for p in podman_images.copied_files(tmp_path / "Dockerfile", tmp_path)] == ["main.py"]
    (tmp_path / "notes.txt").write_text("changed, but not copied\n")
    (tmp_path / "app" / "__pycache__" / "main.pyc").write_text("y")
    assert digest("--volume", "/some/cache:/uv-cache") == first  # a mounted cache is not content
    (tmp_path / "app" / "main.py").write_text("print(2)\n")
    changed = digest()
    assert changed != first
    assert podman_images.content_digest(("-f", str(tmp_path / "Dockerfile"), "--build-arg", "X=2",
                                         str(tmp_path))) != changed  # fmt: skip
    # The same content in another checkout (CI's fresh clone) has the same digest.
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("app", "Dockerfile", ".dockerignore"):
        subprocess.run(["cp", "-r", str(tmp_path / name), str(clone / name)], check=True)
    assert podman_images.content_digest(("-f", str(clone / "Dockerfile"), "--build-arg", "X=1", str(clone))) == changed
