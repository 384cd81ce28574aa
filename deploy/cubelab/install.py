"""Installs what the embedded stack runs into the install directory, each environment only when its inputs change.

- services: mlflow and SeaweedFS, for the tracking servers and S3;
- hub: JupyterHub, JupyterLab and the users' default kernel, built with Debian's /usr/bin/python3 when
  cubelab runs as root (users' servers run as their own accounts, which cannot read root's Python);
- npm: configurable-http-proxy, the hub's proxy.
A second `up` finds every marker current and skips all of it in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from cubelab.procs import StartError, log_tail

SOURCE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = SOURCE_DIR.parent
TOOLKIT_DIR = REPO_DIR / "kernels" / "toolkit"
# Versions every environment shares (mlflow), given once; each pip install below reads it.
CONSTRAINTS = SOURCE_DIR / "requirements" / "constraints.txt"
PROXY_PACKAGE = "configurable-http-proxy@5.3.0"

Progress = Callable[[str], None]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _run_all(steps: list[list[str]], log: Path, progress: Progress, name: str) -> None:
    with open(log, "w") as out:
        for argv in steps:
            if _run_logged(argv, out, progress) != 0:
                out.flush()
                raise StartError("install", f"{name}: `{' '.join(argv)}` failed:\n{log_tail(log)}")


def _run_logged(argv: list[str], out: TextIO, progress: Progress, every: float = 5.0) -> int:
    """Run argv with its output into out; every few seconds, say which package it is at."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    last = time.monotonic()
    for line in proc.stdout:
        out.write(line)
        if line.startswith(("Collecting ", "Installing collected")) and time.monotonic() - last > every:
            progress(f"  ... {line.strip()[:100]}")
            last = time.monotonic()
    return proc.wait()


def kernel_requirements(environment_yml: Path) -> tuple[str, list[str]]:
    """The display name and the pip requirements of a kernel's environment.yml (the single source)."""
    import yaml

    spec = yaml.safe_load(environment_yml.read_text())
    pip: list[str] = []
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict) and "pip" in dep:
            pip += [str(p) for p in dep["pip"]]
    return str(spec.get("display_name", spec["name"])), pip


def kernel_envs(install_dir: Path, hub_venv: Path, progress: Progress) -> list[str]:
    """One venv per folder of kernels/, each with the toolkit; kernelspecs installed into the hub's prefix."""
    names = []
    for spec_file in sorted((REPO_DIR / "kernels").glob("*/environment.yml")):
        name = spec_file.parent.name
        display, pip = kernel_requirements(spec_file)
        requirements = install_dir / f"kernel-{name}.txt"
        text = "\n".join(pip) + "\n"
        if not requirements.exists() or requirements.read_text() != text:
            install_dir.mkdir(parents=True, exist_ok=True)
            requirements.write_text(text)
        venv = python_env(install_dir, f"kernel-{name}", requirements, progress, python=user_python(),
                          editable=(TOOLKIT_DIR,), copy=True)  # fmt: skip
        kernel = f"cubelab-{name}"
        spec_dir = hub_venv / "share" / "jupyter" / "kernels" / kernel
        if not (spec_dir / "kernel.json").exists() or display not in (spec_dir / "kernel.json").read_text():
            _run_all(
                [[str(venv / "bin/python"), "-m", "ipykernel", "install", "--prefix", str(hub_venv),
                  "--name", kernel, "--display-name", display]],
                install_dir / f"install-kernel-{name}.log", progress, kernel,
            )  # fmt: skip
        names.append(kernel)
    return names


def python_env(
    install_dir: Path,
    name: str,
    requirements: Path,
    progress: Progress,
    *,
    python: str = sys.executable,
    editable: tuple[Path, ...] = (SOURCE_DIR,),
    copy: bool = False,
) -> Path:
    """The venv install_dir/name with requirements and cubelab's own packages (without their dependencies):
    editable, or copied into the venv (copy=True) for environments other accounts run, which must not depend on
    reading the source tree (it may sit in a private folder such as /root)."""
    venv = install_dir / name
    marker, editable_marker = venv / ".cubelab-installed", venv / ".cubelab-editable"
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    digest = _digest(requirements.read_bytes(), CONSTRAINTS.read_bytes(), version.stdout.encode())
    editable_digest = _digest(*((p / "pyproject.toml").read_bytes() for p in editable))
    if copy:  # copies go stale when any source file changes, not only the metadata
        editable_digest = _digest(editable_digest.encode(), *(f.read_bytes() for f in _package_files(editable)))
    current = marker.exists() and marker.read_text().strip() == digest
    if current and editable_marker.exists() and editable_marker.read_text().strip() == editable_digest:
        return venv
    install_dir.mkdir(parents=True, exist_ok=True)
    log = install_dir / f"install-{name}.log"
    pip = [str(venv / "bin/pip"), "install", "--disable-pip-version-check"]
    steps = []
    if not current:  # new requirements or Python: build the environment again
        if venv.exists():
            shutil.rmtree(venv)
        progress(f"installing the {name} environment into {venv} (about a minute); log: {log}")
        steps += [[python, "-m", "venv", str(venv)], [*pip, "-r", str(requirements), "-c", str(CONSTRAINTS)]]
    # cubelab's own packages (entry points, metadata) are cheap to refresh on their own.
    mode = ["--force-reinstall"] if copy else ["-e"]
    steps += [[*pip, "--no-deps", *mode, str(p)] for p in editable]
    _run_all(steps, log, progress, name)
    marker.write_text(digest + "\n")
    editable_marker.write_text(editable_digest + "\n")
    if not current:
        progress(f"{name} environment installed")
    return venv


def _package_files(roots: tuple[Path, ...]) -> list[Path]:
    files = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".json", ".html", ".toml") and "tests" not in path.parts:
                if ".egg-info" not in str(path) and "__pycache__" not in path.parts and "build" not in path.parts:
                    files.append(path)
    return files


SERVICES, HUB = "services", "hub"  # the environments' folders under the install dir


def installed(install_dir: Path) -> tuple[Path, Path]:
    """Where services_env and hub_env install (the supervisor restarts from these without installing)."""
    return install_dir / SERVICES, install_dir / HUB


def services_env(install_dir: Path, progress: Progress) -> Path:
    """As root the tracking servers run as their own system accounts: a copy on Debian's Python they can read."""
    root = os.geteuid() == 0
    return python_env(install_dir, SERVICES, SOURCE_DIR / "requirements" / "services.txt", progress,
                      python=user_python(), copy=root)  # fmt: skip


def user_python() -> str:
    """Debian's python3 when root (readable by every account), else the interpreter running cubelab."""
    if os.geteuid() == 0 and os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return sys.executable


def hub_env(install_dir: Path, progress: Progress) -> Path:
    return python_env(
        install_dir,
        HUB,
        SOURCE_DIR / "requirements" / "hub.txt",
        progress,
        python=user_python(),
        editable=(SOURCE_DIR, TOOLKIT_DIR),
        copy=True,
    )


def proxy_binary(install_dir: Path) -> Path:
    """Where proxy_command installs configurable-http-proxy."""
    return install_dir / "npm" / "node_modules" / ".bin" / "configurable-http-proxy"


def proxy_command(install_dir: Path, progress: Progress) -> Path:
    """configurable-http-proxy from npm, installed under install_dir/npm."""
    prefix = install_dir / "npm"
    binary = proxy_binary(install_dir)
    marker = prefix / ".cubelab-installed"
    if binary.exists() and marker.exists() and marker.read_text().strip() == PROXY_PACKAGE:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise StartError("install", "npm was not found; install Node.js and npm (`apt-get install nodejs npm`)")
    prefix.mkdir(parents=True, exist_ok=True)
    progress(f"installing {PROXY_PACKAGE} with npm into {prefix}")
    _run_all([[npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), PROXY_PACKAGE]],
             install_dir / "install-npm.log", progress, "npm")  # fmt: skip
    marker.write_text(PROXY_PACKAGE + "\n")
    return binary
