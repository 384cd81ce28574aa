"""Lock files of the embedded stack's Python environments: every package at one version, with hashes.

The environment files stay the single list of what each environment wants (deploy/requirements/services.txt and
hub.txt, the pip section of each kernels/*/environment.yml, the shared pins in constraints.txt). From them,
`python -m cubelab.locks` resolves each environment with uv, for CPython 3.11 on x86_64 Linux, into
deploy/requirements/locks/NAME.txt, whose header records a digest of its inputs: a lock whose inputs changed
since is stale (`python -m cubelab.locks --check` and deploy/tests/test_locks.py say which), and `cubelab up`
does not use it. `cubelab up` installs from a current lock with uv (`uv pip sync`: exactly the lock, hashes
checked), the environments in parallel; elsewhere (another Python or machine, a stale lock, no uv, or
CUBELAB_INSTALLER=pip) it installs from the environment files with pip, as before.

Where packages come from: pip's own configuration (its find-links, index and extra indexes, from the
environment and `pip config`), passed on to uv, so both installers see the same sources; here that is PyPI and
a local wheel folder with the CPU build of torch.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = SOURCE_DIR.parent
REQUIREMENTS = SOURCE_DIR / "requirements"
CONSTRAINTS = REQUIREMENTS / "constraints.txt"
LOCK_DIR = REQUIREMENTS / "locks"
PYTHON = "3.11"  # what the locks are resolved for: Debian bookworm's python3, and the images' Python
PLATFORM = "x86_64-manylinux_2_28"
DIGEST_LINE = "# inputs-sha256: "


def kernel_requirements(environment_yml: Path) -> tuple[str, list[str]]:
    """The display name and the pip requirements of a kernel's environment.yml (the single source)."""
    import yaml

    spec = yaml.safe_load(environment_yml.read_text())
    pip: list[str] = []
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict) and "pip" in dep:
            pip += [str(p) for p in dep["pip"]]
    return str(spec.get("display_name", spec["name"])), pip


def kernel_specs(*, conda_only: bool = False) -> list[Path]:
    """The kernels' environment files, one kernel per folder of kernels/: those pip can install (the embedded
    stack's, the venv build of the notebook image's, the locked ones), or with conda_only=True every one, those
    marked `conda_only: true` (conda-forge packages, built into the images by conda) included."""
    import yaml

    specs = sorted((REPO_DIR / "kernels").glob("*/environment.yml"))
    return [s for s in specs if conda_only or not yaml.safe_load(s.read_text()).get("conda_only", False)]


def requirements_text(pip: list[str]) -> str:
    """A kernel's pip list as the requirements file it is installed from and locked for (the lock's digest is of
    this text, so the installer and the locks must write it alike)."""
    return "\n".join(pip) + "\n"


@dataclass(frozen=True)
class Environment:
    """One environment cubelab installs: its name (its folder under the install dir) and its requirements."""

    name: str
    requirements: str  # the text of a requirements file
    source: str  # where the requirements come from, relative to the repository

    @property
    def lock(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.requirements, CONSTRAINTS.read_text(), PYTHON, PLATFORM):
            h.update(part.encode() + b"\0")
        return h.hexdigest()


def environments() -> list[Environment]:
    out = [Environment(name, (REQUIREMENTS / f"{name}.txt").read_text(), f"deploy/requirements/{name}.txt")
           for name in ("services", "hub")]  # fmt: skip
    for spec in kernel_specs():
        _display, pip = kernel_requirements(spec)
        out.append(Environment(f"kernel-{spec.parent.name}", requirements_text(pip), str(spec.relative_to(REPO_DIR))))
    return out


def recorded_digest(lock: Path) -> str | None:
    if not lock.exists():
        return None
    for line in lock.read_text().splitlines()[:5]:
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE) :].strip()
    return None


def stale() -> list[str]:
    """The environments whose lock is missing or was made from other inputs."""
    return [env.name for env in environments() if recorded_digest(env.lock) != env.digest()]


def uv_binary() -> str | None:
    """uv from cubelab's own environment (a dependency of cubelab), else from PATH."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def lock_for(name: str, python_version: str, requirements: str) -> Path | None:
    """The lock to install environment `name` with these requirements from, for an interpreter of python_version
    (sys.version's text), or None when it must be pip: no uv, CUBELAB_INSTALLER=pip, another Python or machine, a
    missing lock, or one made from other requirements (stale, or a kernel's CUDA variant, which has no lock)."""
    if os.environ.get("CUBELAB_INSTALLER", "auto") == "pip" or uv_binary() is None:
        return None
    if not python_version.startswith(PYTHON + ".") or platform.machine() != "x86_64" or sys.platform != "linux":
        return None
    env = Environment(name, requirements, "")
    if recorded_digest(env.lock) != env.digest():
        return None
    return env.lock


def pip_sources() -> list[str]:
    """pip's package sources (environment and configuration files) as uv options."""
    values: dict[str, list[str]] = {"find-links": [], "index-url": [], "extra-index-url": []}
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.split(".", 1)[-1]
        if option in values:
            values[option] += shlex.split(value.strip().strip("'\""))
    for option in values:
        values[option] += os.environ.get(f"PIP_{option.upper().replace('-', '_')}", "").split()
    # pip takes the best version from all its sources; uv, by default, only from the first that has a package.
    args: list[str] = ["--index-strategy", "unsafe-best-match"]
    for option, found in values.items():
        for value in dict.fromkeys(found):
            path = value.removeprefix("file://")
            if "://" not in value or value.startswith("file://"):
                if not Path(path).exists():
                    continue  # pip only warns about a missing folder; uv stops
            args += [f"--{option}", value]
    return args


def compile_lock(env: Environment, uv: str) -> None:
    """Resolve env with uv into its lock file, headed by the digest of its inputs."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    requirements = LOCK_DIR / f".{env.name}.in"
    requirements.write_text(env.requirements)
    try:
        done = subprocess.run(
            [uv, "pip", "compile", str(requirements), "--constraint", str(CONSTRAINTS), "--python-version", PYTHON,
             "--python-platform", PLATFORM, "--generate-hashes", "--no-header", "--no-annotate", *pip_sources()],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        requirements.unlink()
    if done.returncode != 0:
        raise SystemExit(f"cubelab.locks: resolving {env.name} failed:\n{done.stderr[-3000:]}")
    header = (f"# The {env.name} environment, locked for CPython {PYTHON} on {PLATFORM} from {env.source}\n"
              "# and deploy/requirements/constraints.txt. Made by `python -m cubelab.locks`; do not edit.\n"
              f"{DIGEST_LINE}{env.digest()}\n")  # fmt: skip
    env.lock.write_text(header + done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cubelab.locks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--check", action="store_true", help="only say which locks are stale (exit 1 if any)")
    parser.add_argument("--all", action="store_true", help="resolve every lock again, current or not")
    parser.add_argument(
        "--sources",
        action="store_true",
        help="print pip's package sources here as uv options (the Makefile's uv installs use them)",
    )
    args = parser.parse_args(argv)
    if args.sources:
        print(" ".join(shlex.quote(option) for option in pip_sources()))
        return 0
    old = stale()
    if args.check:
        for name in old:
            print(f"stale: {name} (run python -m cubelab.locks)")
        return 1 if old else 0
    uv = uv_binary()
    if uv is None:
        raise SystemExit("cubelab.locks: uv is not installed (pip install uv; it is a dependency of cubelab)")
    for env in environments():
        if args.all or env.name in old:
            print(f"locking {env.name} ...", flush=True)
            compile_lock(env, uv)
    for lock in sorted(LOCK_DIR.glob("*.txt")):
        if lock.stem not in {e.name for e in environments()}:
            lock.unlink()
            print(f"removed {lock.name}: no such environment any more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
