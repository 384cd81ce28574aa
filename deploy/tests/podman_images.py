"""Building and running cubelab's images with podman for the image tests (no Docker engine on these machines).

podman needs runc, cgroupfs and explicit ulimits here (FACTS.md); no registry is reachable, so the base image is
made with debootstrap: Debian bookworm with python3, python3-venv and ca-certificates, plus this machine's CA
bundle and pip/npm settings pointing at it (package downloads go through a TLS-inspecting proxy here; a site's
own base image would carry its CA the same way). The images are built with `--build-arg BASE_IMAGE` = that base.
testcontainers talks to podman's Docker-compatible API on a socket served for the test session.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from cubelab.prereqs import IMAGE_TESTS, PODMAN_STATE, describe_missing, missing_requirements, podman_environment

ROOT = Path(__file__).resolve().parents[2]
STATE = PODMAN_STATE
BASE_IMAGE = "localhost/cubelab-base:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def require_containers() -> None:
    """Skip without root (podman runs as root here); as root, fail naming each missing program and the tests it
    breaks. `make test` installs all of it as root and runs a container before any test (cubelab.prereqs)."""
    if os.geteuid() != 0:
        pytest.skip("building images needs root here (podman as root with runc; make test installs it then)")
    if missing := [r for r in missing_requirements() if set(r.tests) & set(IMAGE_TESTS)]:
        pytest.fail(f"missing (make test installs them as root with apt):\n{describe_missing(missing)}")


def environment() -> dict[str, str]:
    return podman_environment()


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], env=environment(), capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base_image() -> str:
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    print(f"[images] making {BASE_IMAGE} with debootstrap (~40 s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="cubelab-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(rootfs), "http://deb.debian.org/debian"],
            check=True, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        if HOST_CA.exists():  # this site's CA (see the module docstring)
            shutil.copy(HOST_CA, rootfs / "etc/ssl/certs/ca-certificates.crt")
            (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {HOST_CA}\n")
            (rootfs / "etc/npmrc").write_text(f"cafile={HOST_CA}\n")
            (rootfs / "usr/etc").mkdir(exist_ok=True)
            (rootfs / "usr/etc/npmrc").write_text(f"cafile={HOST_CA}\n")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        done = subprocess.run(
            ["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=environment(), capture_output=True, check=False
        )
        tar.wait()
        if done.returncode != 0:
            raise RuntimeError(f"podman import failed: {done.stderr.decode()[-2000:]}")
    return BASE_IMAGE


def image_id(name: str) -> str | None:
    done = podman("image", "inspect", "--format", "{{.Id}}", name, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def build_image(image: str, *args: str, timeout: float = 900) -> bool:
    """podman build -t image ARGS, once per content: the image carries the digest of what it is built from (its
    Dockerfile, the files its COPY lines take from the context, its build arguments and its base image's id) as a
    label, and a build whose digest matches the tagged image's is skipped. A rebuild removes the image the tag named
    before (unless a container still uses it): the notebook image is GBs."""
    digest = content_digest(args)
    if image_label(image, CONTENT_LABEL) == digest:
        print(f"[images] {image} is current (content {digest[:12]})", flush=True)
        return False
    before = image_id(image)
    podman("build", "--format", "docker", "--network", "host", "--label", f"{CONTENT_LABEL}={digest}", "-t", image,
           *args, timeout=timeout)  # fmt: skip
    if before and before != image_id(image):
        podman("rmi", before, check=False)
    return True


CONTENT_LABEL = "io.cubelab.content"


def image_label(name: str, label: str) -> str | None:
    done = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', name, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def content_digest(args: tuple[str, ...]) -> str:
    """The digest of a build's inputs (`podman build` ARGS: -f DOCKERFILE, --build-arg, ..., CONTEXT). Mounted
    volumes are caches and package sources, not content, and stay out, and so do the checkout's own paths (a fresh
    clone elsewhere builds nothing again); a base image counts by its id."""
    options, context = list(args[:-1]), Path(args[-1])
    dockerfile = Path(options[options.index("-f") + 1]) if "-f" in options else context / "Dockerfile"
    h = hashlib.sha256(dockerfile.read_bytes())
    skip = False
    for option in options:
        if skip:
            skip = False
            continue
        if option in ("--volume", "-f"):  # a mount; the Dockerfile's path (its content is hashed above)
            skip = True
            continue
        h.update(b"\0arg " + option.encode())
        if option.startswith("BASE_IMAGE="):
            h.update((image_id(option.removeprefix("BASE_IMAGE=")) or "absent").encode())
    for path in copied_files(dockerfile, context):
        h.update(b"\0file " + str(path.relative_to(context)).encode() + b"\0" + path.read_bytes())
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
    return h.hexdigest()


def copied_files(dockerfile: Path, context: Path) -> list[Path]:
    """The context's files that the Dockerfile's COPY and ADD lines take, after .dockerignore."""
    sources: list[str] = []
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    ignore = context / ".dockerignore"
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")] \
        if ignore.exists() else []  # fmt: skip
    found: set[Path] = set()
    for source in sources:
        top = context / source
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if path.is_file() and not dockerignored(str(path.relative_to(context)), patterns):
                found.add(path)
    return sorted(found)


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule for one path: the last pattern that matches it or a folder above it decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            ignored = not negated
    return ignored


def build_file(dockerfile: Path, image: str, context: Path = ROOT) -> str:
    """Build a Dockerfile on the debootstrap base; podman's layer cache makes a rebuild quick."""
    started = time.monotonic()
    if build_image(image, "--build-arg", f"BASE_IMAGE={ensure_base_image()}", "-f", str(dockerfile), str(context)):
        print(f"[images] {image} built in {time.monotonic() - started:.0f} s", flush=True)
    return image


def build_notebook(tag: str = "test") -> str:
    """images/notebook built as on a host without conda-forge (KERNEL_ENVS=venv) on the debootstrap base: uv
    installs the kernels from the lock files, with this machine's package sources (local mirrors mounted at the
    same paths) and the embedded stack's uv cache (mounted, so nothing is downloaded twice)."""
    import scratch

    from cubelab import locks

    scratch.use_shared_installs()
    cache = Path(os.environ["CUBELAB_INSTALL_DIR"]) / "uv-cache"
    cache.mkdir(parents=True, exist_ok=True)
    sources = locks.pip_sources()
    if "--index-strategy" in sources:  # build.sh sets it
        at = sources.index("--index-strategy")
        sources = sources[:at] + sources[at + 2 :]
    mounts = sorted({p.removeprefix("file://").rstrip("/").rsplit("/simple", 1)[0] for p in sources
                     if p.startswith(("/", "file:///")) and Path(p.removeprefix("file://")).exists()})  # fmt: skip
    image, started = f"localhost/cubelab/notebook:{tag}", time.monotonic()
    volumes = [arg for m in mounts for arg in ("--volume", f"{m}:{m}:ro")]
    built = build_image(image, "--volume", f"{cache}:/uv-cache", *volumes,
                        "--build-arg", f"BASE_IMAGE={ensure_base_image()}",
                        "--build-arg", "KERNEL_ENVS=venv", "--build-arg", "TORCH_INDEX=",
                        "--build-arg", f"UV_ARGS={' '.join(['--system-certs', *sources])}",
                        "-f", str(ROOT / "images/notebook/Dockerfile"), str(ROOT), timeout=1800)  # fmt: skip
    if built:
        print(f"[images] {image} (kernels from the lock files) built in {time.monotonic() - started:.0f} s", flush=True)
    return image


def build_gateway(tag: str = "test") -> str:
    """images/gateway on the notebook image of the same tag (build_notebook first): its kernels run the clusters."""
    image, started = f"localhost/cubelab/gateway:{tag}", time.monotonic()
    built = build_image(image, "--build-arg", f"BASE_IMAGE=localhost/cubelab/notebook:{tag}",
                        "-f", str(ROOT / "images/gateway/Dockerfile"), str(ROOT))  # fmt: skip
    if built:
        print(f"[images] {image} built in {time.monotonic() - started:.0f} s", flush=True)
    return image


def build(name: str, tag: str = "test") -> str:
    """Build images/<name> (context: the repository)."""
    return build_file(ROOT / "images" / name / "Dockerfile", f"localhost/cubelab/{name}:{tag}")


def build_folder(folder: Path, image: str) -> str:
    """Build the Dockerfile in folder with the folder as context (the compose test's stand-ins)."""
    return build_file(folder / "Dockerfile", image, context=folder)


STANDINS = Path(__file__).resolve().parent / "standins"


def stand_ins(workdir: Path, weed: Path) -> dict[str, str]:
    """Postgres and SeaweedFS stand-in images (standins/README.md): name in cubelab's files -> local image."""
    (workdir / "Dockerfile").write_text((STANDINS / "seaweedfs" / "Dockerfile").read_text())
    (workdir / "weed").write_bytes(weed.read_bytes())
    (workdir / "weed").chmod(0o755)
    return {
        "postgres": build_folder(STANDINS / "postgres", "localhost/cubelab-standin/postgres:15"),
        "seaweedfs": build_folder(workdir, "localhost/cubelab-standin/seaweedfs:test"),
    }


@contextmanager
def docker_api() -> Iterator[str]:
    """podman's Docker-compatible API on a private socket, with testcontainers pointed at it."""
    socket = STATE / "podman.sock"
    socket.unlink(missing_ok=True)
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    try:
        deadline = time.monotonic() + 20
        while not socket.exists():
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError("podman system service did not open its socket")
            time.sleep(0.1)
        os.environ["DOCKER_HOST"] = f"unix://{socket}"
        # Ryuk (testcontainers' reaper container) needs a registry; containers are stopped by the tests.
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        yield f"unix://{socket}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        service.terminate()
        service.wait(timeout=20)


def wait_for(url: str, container: Any, timeout: float = 120, **kwargs: Any) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=3, **kwargs)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                out, err = container.get_logs()
                raise AssertionError(f"{url} not answering; container log:\n{(out + err).decode()[-3000:]}") from None
            time.sleep(0.5)
