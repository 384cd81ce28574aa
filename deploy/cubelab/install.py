"""Installs what the embedded stack runs into the install directory, each environment only when its inputs change.

- services: mlflow and SeaweedFS, for the tracking servers and S3;
- hub: JupyterHub, JupyterLab and the users' default kernel, built with Debian's /usr/bin/python3 when
  cubelab runs as root (users' servers run as their own accounts, which cannot read root's Python);
- npm: configurable-http-proxy, the hub's proxy.
Each Python environment is installed with uv from its lock file (cubelab.locks) when the lock is current and fits
this Python, else with pip from the environment files; the environments and npm's install run in parallel
(install_all). A second `up` finds every marker current and skips all of it in milliseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from cubelab import gpus, locks
from cubelab.locks import kernel_requirements, kernel_specs
from cubelab.procs import StartError, log_tail

SOURCE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = SOURCE_DIR.parent
TOOLKIT_DIR = REPO_DIR / "kernels" / "toolkit"
# Versions every environment shares (mlflow), given once; each pip install below reads it.
CONSTRAINTS = SOURCE_DIR / "requirements" / "constraints.txt"
PROXY_PACKAGE = "configurable-http-proxy@5.3.0"
COMPAT_PTH = "cubelab-toolkit-compat.pth"  # cubelab_toolkit.compat.PTH_NAME: written by the kernel's own Python

Progress = Callable[[str], None]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _run_all(steps: list[list[str]], log: Path, progress: Progress, name: str, env: dict[str, str] | None = None
             ) -> None:  # fmt: skip
    with open(log, "w") as out:
        for argv in steps:
            if _run_logged(argv, out, progress, env=env) != 0:
                out.flush()
                raise StartError("install", f"{name}: `{' '.join(argv)}` failed:\n{log_tail(log)}")


# Lines of pip's and uv's output that say how far an install is.
MILESTONES = ("Collecting ", "Installing collected", "Resolved ", "Prepared ", "Installed ")


def _run_logged(argv: list[str], out: TextIO, progress: Progress, every: float = 5.0,
                env: dict[str, str] | None = None) -> int:  # fmt: skip
    """Run argv with its output into out; every few seconds, say which package it is at."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    last = time.monotonic()
    for line in proc.stdout:
        out.write(line)
        if line.startswith(MILESTONES) and time.monotonic() - last > every:
            progress(f"  ... {line.strip()[:100]}")
            last = time.monotonic()
    return proc.wait()


def kernel_env(install_dir: Path, spec_file: Path, progress: Progress, cuda: bool = False) -> Path:
    """The venv of one folder of kernels/, with the toolkit (and its framework's CUDA build, with cuda)."""
    name = spec_file.parent.name
    _display, pip = kernel_requirements(spec_file)
    if cuda:
        pip = gpus.cuda_requirements(pip) or pip
    requirements = install_dir / f"kernel-{name}.txt"
    text = locks.requirements_text(pip)
    if not requirements.exists() or requirements.read_text() != text:
        install_dir.mkdir(parents=True, exist_ok=True)
        requirements.write_text(text)
    venv = python_env(install_dir, f"kernel-{name}", requirements, progress, python=user_python(),
                      editable=(TOOLKIT_DIR,), copy=True)  # fmt: skip
    if not list(venv.glob(f"lib/python*/site-packages/{COMPAT_PTH}")):
        # What DeepESDL's notebooks expect of mlflow (cubelab_toolkit.compat), at every start of the kernel.
        _run_all([[str(venv / "bin/python"), "-c", "import cubelab_toolkit.compat as c; c.write_pth()"]],
                 install_dir / f"install-compat-{name}.log", progress, f"kernel-{name}")  # fmt: skip
    return venv


def register_kernel(install_dir: Path, spec_file: Path, venv: Path, hub_venv: Path, progress: Progress,
                    cuda: bool = False) -> str:  # fmt: skip
    """The kernel's kernelspec in the hub's prefix (where JupyterLab finds it); a CUDA build is named as such."""
    name = spec_file.parent.name
    display, pip = kernel_requirements(spec_file)
    if cuda and gpus.cuda_requirements(pip) is not None:
        display = gpus.gpu_display_name(display)
    kernel = f"cubelab-{name}"
    spec_dir = hub_venv / "share" / "jupyter" / "kernels" / kernel
    if not (spec_dir / "kernel.json").exists() or display not in (spec_dir / "kernel.json").read_text():
        _run_all(
            [[str(venv / "bin/python"), "-m", "ipykernel", "install", "--prefix", str(hub_venv),
              "--name", kernel, "--display-name", display]],
            install_dir / f"install-kernel-{name}.log", progress, kernel,
        )  # fmt: skip
    return kernel


def kernel_envs(install_dir: Path, hub_venv: Path, progress: Progress) -> list[str]:
    """One venv per folder of kernels/, each with the toolkit; kernelspecs installed into the hub's prefix."""
    return [register_kernel(install_dir, spec, kernel_env(install_dir, spec, progress), hub_venv, progress)
            for spec in kernel_specs()]  # fmt: skip


def install_all(install_dir: Path, progress: Progress, cuda: bool = False) -> tuple[Path, Path, list[str], Path]:
    """Every environment `up` needs, at once: the services', the hub's, each kernel's (with CUDA builds, with cuda)
    and the proxy. Returns the services venv, the hub venv, the kernels' names and the proxy. Each install that
    fails is reported after all have ended (their logs complete)."""
    jobs: dict[str, Future[Any]] = {}
    with ThreadPoolExecutor(max_workers=4 + len(kernel_specs())) as pool:
        jobs["services"] = pool.submit(services_env, install_dir, progress)
        jobs["hub"] = pool.submit(hub_env, install_dir, progress)
        jobs["proxy"] = pool.submit(proxy_command, install_dir, progress)
        for spec in kernel_specs():
            jobs[spec.parent.name] = pool.submit(kernel_env, install_dir, spec, progress, cuda)
    failed = [(name, job.exception()) for name, job in jobs.items() if job.exception() is not None]
    if failed:
        first = failed[0][1]
        if len(failed) > 1:
            progress(f"installs that failed: {', '.join(name for name, _ in failed)}")
        raise first  # type: ignore[misc]
    hub_venv = jobs["hub"].result()
    kernels = [register_kernel(install_dir, spec, jobs[spec.parent.name].result(), hub_venv, progress, cuda)
               for spec in kernel_specs()]  # fmt: skip
    return jobs["services"].result(), hub_venv, kernels, jobs["proxy"].result()


@contextmanager
def _exclusive(install_dir: Path, name: str) -> Iterator[None]:
    """One installer of environment `name` at a time, across processes (two `cubelab up`, or the test suite's
    workers starting their first stacks together); the second finds the first's work done."""
    install_dir.mkdir(parents=True, exist_ok=True)
    with open(install_dir / f".{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def python_env(install_dir: Path, name: str, requirements: Path, progress: Progress, **options: Any) -> Path:
    """_python_env under the environment's install lock."""
    with _exclusive(install_dir, name):
        return _python_env(install_dir, name, requirements, progress, **options)


def _python_env(
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
    lock = locks.lock_for(name, version.stdout, requirements.read_text())
    digest = _digest(requirements.read_bytes(), CONSTRAINTS.read_bytes(), version.stdout.encode(),
                     lock.read_bytes() if lock else b"pip")  # fmt: skip
    editable_digest = _digest(*((p / "pyproject.toml").read_bytes() for p in editable))
    if copy:  # copies go stale when any source file changes, not only the metadata
        editable_digest = _digest(editable_digest.encode(), *(f.read_bytes() for f in _package_files(editable)))
    current = marker.exists() and marker.read_text().strip() == digest
    if current and editable_marker.exists() and editable_marker.read_text().strip() == editable_digest:
        return venv
    install_dir.mkdir(parents=True, exist_ok=True)
    log = install_dir / f"install-{name}.log"
    uv = locks.uv_binary()
    if lock and uv:
        env = _uv_env(install_dir)
        target = ["--python", str(venv / "bin/python")]
        install = [uv, "pip", "install", *target, *locks.pip_sources()]
        create = [[uv, "venv", "--seed", "--python", python, str(venv)],
                  [uv, "pip", "sync", *target, *locks.pip_sources(), str(lock)]]  # fmt: skip
        how = f"with uv from {lock.relative_to(locks.REPO_DIR)}"
        mode = ["--reinstall"] if copy else ["-e"]
    else:
        env = None
        install = [str(venv / "bin/pip"), "install", "--disable-pip-version-check"]
        create = [[python, "-m", "venv", str(venv)], [*install, "-r", str(requirements), "-c", str(CONSTRAINTS)]]
        how = "with pip from the environment files"
        mode = ["--force-reinstall"] if copy else ["-e"]
    steps = []
    if not current:  # new requirements, lock or Python: build the environment again
        if venv.exists():
            shutil.rmtree(venv)
        progress(f"installing the {name} environment into {venv} {how}; log: {log}")
        steps += create
    # cubelab's own packages (entry points, metadata) are cheap to refresh on their own.
    steps += [[*install, "--no-deps", *mode, str(p)] for p in editable]
    _run_all(steps, log, progress, name, env)
    marker.write_text(digest + "\n")
    editable_marker.write_text(editable_digest + "\n")
    if not current:
        progress(f"{name} environment installed")
    return venv


def _uv_env(install_dir: Path) -> dict[str, str]:
    """uv's cache beside the environments (same filesystem: files are hard-linked, not copied), and never a Python
    of uv's own."""
    return {**os.environ, "UV_CACHE_DIR": str(install_dir / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1"}  # fmt: skip


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
    """configurable-http-proxy from npm, installed under install_dir/npm (one installer at a time)."""
    with _exclusive(install_dir, "npm"):
        return _proxy_command(install_dir, progress)


def _proxy_command(install_dir: Path, progress: Progress) -> Path:
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
