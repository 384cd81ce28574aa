"""Installs what the embedded stack runs: one virtual environment for the services (mlflow, SeaweedFS).

The environment is rebuilt only when its requirements change, so a second `up` skips it in milliseconds.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

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
            if _run_logged(argv, out, progress) != 0:
                out.flush()
                raise StartError("install", f"`{' '.join(argv)}` failed:\n{log_tail(log)}")
    marker.write_text(digest + "\n")
    progress("services installed")
    return venv


def _run_logged(argv: list[str], out: TextIO, progress: Callable[[str], None], every: float = 5.0) -> int:
    """Run argv with its output into out; every few seconds, say which package pip is at."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    last = time.monotonic()
    for line in proc.stdout:
        out.write(line)
        if line.startswith(("Collecting ", "Installing collected")) and time.monotonic() - last > every:
            progress(f"  ... {line.strip()[:100]}")
            last = time.monotonic()
    return proc.wait()
