"""Installs what the embedded stack runs: one virtual environment for the services (mlflow, SeaweedFS).

The environment is rebuilt only when its requirements change, so a second `up` skips it in milliseconds.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cubelab.procs import StartError, log_tail

SOURCE_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = SOURCE_DIR / "requirements" / "services.txt"


def _digest() -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update((SOURCE_DIR / "pyproject.toml").read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def services_env(install_dir: Path, progress: Callable[[str], None]) -> Path:
    """Return the services venv under install_dir, creating or updating it if needed."""
    venv = install_dir / "services"
    marker = venv / ".cubelab-installed"
    digest = _digest()
    if marker.exists() and marker.read_text().strip() == digest:
        return venv
    if not (SOURCE_DIR / "pyproject.toml").exists():
        raise StartError("install", f"cubelab's source tree was not found at {SOURCE_DIR}")
    log = install_dir / "install-services.log"
    install_dir.mkdir(parents=True, exist_ok=True)
    if venv.exists():
        shutil.rmtree(venv)
    progress(f"installing the services (mlflow, SeaweedFS) into {venv}; log: {log}")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        # cubelab itself, for its tracking-server launcher; its own dependencies are not needed there.
        [str(venv / "bin/pip"), "install", "--no-deps", "--disable-pip-version-check", "-e", str(SOURCE_DIR)],
    ]
    with open(log, "w") as out:
        for argv in steps:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                out.flush()
                raise StartError("install", f"`{' '.join(argv)}` failed:\n{log_tail(log)}")
    marker.write_text(digest + "\n")
    progress("services installed")
    return venv
