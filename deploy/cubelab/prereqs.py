"""Checks what the embedded stack needs from the machine; as root, installs what is missing.

Standard library only: `make up` runs it before any virtual environment exists
(python3 deploy/cubelab/prereqs.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

MIN_PYTHON = (3, 11)


def postgres_bindirs() -> list[str]:
    """Folders that may hold the PostgreSQL server binaries, most likely first."""
    if env := os.environ.get("CUBELAB_POSTGRES_BINDIR"):
        return [env]
    found: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        found.append(out.stdout.strip())

    def version(path: str) -> int:
        part = Path(path).parent.name
        return int(part) if part.isdigit() else 0

    found += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    return [f for f in found if f]


def postgres_bindir() -> Path | None:
    for folder in postgres_bindirs():
        if all(os.access(Path(folder) / b, os.X_OK) for b in ("initdb", "postgres")):
            return Path(folder)
    return None


def missing_packages(for_tests: bool = False) -> list[str]:
    """Debian packages that would provide what is missing (with for_tests, also what the test suite needs)."""
    missing = []
    if for_tests and shutil.which("chromium") is None:
        missing.append("chromium")  # the browser tests drive Debian's Chromium with Playwright
    if postgres_bindir() is None:
        missing.append("postgresql")
    if shutil.which("node") is None:
        missing += ["nodejs", "npm"]
    elif shutil.which("npm") is None:
        missing.append("npm")
    return missing


def main(argv: list[str] | None = None) -> int:
    for_tests = "--for-tests" in (sys.argv[1:] if argv is None else argv)
    if sys.version_info < MIN_PYTHON:
        print(
            f"cubelab needs Python >= {'.'.join(map(str, MIN_PYTHON))}; this is {sys.version.split()[0]}. "
            "Run make with PYTHON=/path/to/python3.11 or newer.",
            file=sys.stderr,
        )
        return 1
    missing = missing_packages(for_tests)
    if not missing:
        return 0
    command = f"apt-get update && apt-get install -y --no-install-recommends {' '.join(missing)}"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"cubelab needs: {', '.join(missing)}. Install with:\n  sudo sh -c '{command}'", file=sys.stderr)
        return 1
    print(f"[cubelab] installing missing Debian packages: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["sh", "-c", command], env=env, check=False)
    if done.returncode != 0 or missing_packages(for_tests):
        print(f"cubelab: installing {' '.join(missing)} failed; run `{command}` and retry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
