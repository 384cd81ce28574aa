"""mlflow's version is given in one place, deploy/requirements/constraints.txt, and every install reads it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

from cubelab import install, locks

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "deploy" / "requirements" / "constraints.txt"
# The one other release named: the old mlflow the upgrade test migrates from (never installed into the platform).
OLD_RELEASE = REPO / "deploy" / "tests" / "old_mlflow" / "requirements.txt"
# A version fixed anywhere but the constraints file: mlflow or mlflow-skinny followed by ==, === or ~= and a number.
PIN = re.compile(r"\bmlflow(?:-skinny)?\s*(?:===?|~=)\s*\d")
# The steps of a Dockerfile that install a list of packages, or run an image's build script (which does): each
# must read the constraints.
LIST_INSTALL = re.compile(r"--requirement|pip install -r |env create|cubelab-build-")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines()]


def pins() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


def test_the_constraints_file_fixes_client_and_server_alike() -> None:
    found = pins()
    assert set(found) == {"mlflow", "mlflow-skinny"}
    assert found["mlflow"] == found["mlflow-skinny"]


def test_no_other_file_fixes_mlflows_version() -> None:
    offenders = []
    for path in tracked():
        if path in (CONSTRAINTS, OLD_RELEASE) or path.suffix in (".md", ".ipynb") or not path.is_file():
            continue
        if path.parent == locks.LOCK_DIR:
            continue  # resolved from constraints.txt; test_locks fails when one no longer matches it
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in PIN.finditer(text)]
    assert not offenders, "mlflow's version belongs in deploy/requirements/constraints.txt only:\n" + "\n".join(
        offenders
    )


def script_steps(path: Path) -> list[str]:
    """A shell script's (or Dockerfile's) commands, continuation lines joined."""
    steps, current = [], ""
    for line in path.read_text().splitlines():
        current += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            steps.append(current)
            current = ""
    return steps


def dockerfile_steps(path: Path) -> list[str]:
    """The RUN instructions of a Dockerfile, continuation lines joined."""
    return [step for step in script_steps(path) if step.startswith("RUN ")]


def test_every_image_build_installs_with_the_constraints() -> None:
    checked = 0
    for dockerfile in tracked("*Dockerfile"):
        for step in dockerfile_steps(dockerfile):
            if LIST_INSTALL.search(step):
                checked += 1
                assert "PIP_CONSTRAINT=/tmp/constraints.txt" in step, f"{dockerfile.relative_to(REPO)}: {step[:120]}"
                assert "COPY" in dockerfile.read_text() and "constraints.txt" in dockerfile.read_text()
    assert checked >= 4  # tracking, hub, platform-tests, notebook (its build script)


def test_image_build_scripts_pass_the_constraints_to_uv() -> None:
    """pip and mamba read PIP_CONSTRAINT, which the Dockerfile sets for its build script; uv does not, so each uv
    install of a requirements list in a script names it (uv's installs from lock files need not)."""
    checked = 0
    for script in tracked("images/*.sh"):
        for step in script_steps(script):
            if "uv pip install" in step and "--requirement" in step:
                checked += 1
                assert '--constraint "${PIP_CONSTRAINT}"' in step, f"{script.relative_to(REPO)}: {step[:160]}"
    assert checked >= 1  # images/notebook/build.sh, server side of the venv build


def test_the_embedded_stacks_installs_read_the_constraints() -> None:
    assert install.CONSTRAINTS == CONSTRAINTS
    source = Path(install.__file__).read_text()
    assert '"-c", str(CONSTRAINTS)' in source


def test_the_test_environment_has_the_pinned_mlflow() -> None:
    found = pins()
    assert importlib.metadata.version("mlflow") == found["mlflow"]
    assert importlib.metadata.version("mlflow-skinny") == found["mlflow-skinny"]
