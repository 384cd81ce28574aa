"""A rendered compose file, run with podman-compose the way test_compose_run.py's docstring describes: shared by the
compose run tests (local accounts: test_compose_run.py; OIDC: test_compose_oidc.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import podman_images as containers  # deploy/tests/podman_images.py
import pytest
import yaml
from scratch import use_shared_installs  # deploy/tests/scratch.py

from cubelab.backends import compose
from cubelab.config import load
from cubelab.install import services_env
from cubelab.procs import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
PODMAN_COMPOSE = Path(sys.prefix) / "bin" / "podman-compose"


def podman_compose(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PODMAN_COMPOSE), "--profile", "test", "-f", "podman.yml", *args],
        cwd=project, env=containers.environment(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def wait_healthy(container: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while containers.podman("healthcheck", "run", container, check=False).returncode != 0:
        if time.monotonic() > deadline:
            logs = containers.podman("logs", container, check=False)
            raise AssertionError(
                f"{container} not healthy after {timeout:.0f} s:\n{(logs.stdout + logs.stderr)[-3000:]}"
            )
        time.sleep(1)


def wait_exited_ok(container: str, timeout: float = 180) -> None:
    done = containers.podman("wait", container, check=False, timeout=timeout)
    logs = containers.podman("logs", container, check=False)
    assert done.stdout.strip() == "0", f"{container} exited {done.stdout.strip()}:\n{logs.stdout + logs.stderr}"


def runnable(compose_file: dict[str, Any], stand_ins: dict[str, str], docker_socket: str) -> dict[str, Any]:
    """The rendered file as podman 4.3 can run it (see the module docstring)."""
    for name, service in compose_file["services"].items():
        service.pop("depends_on", None)
        service.pop("build", None)
        if name in stand_ins:
            service["image"] = stand_ins[name]
    hub = compose_file["services"]["hub"]
    hub["volumes"] = [v if "docker.sock" not in v else f"{docker_socket}:/var/run/docker.sock" for v in hub["volumes"]]
    # What an operator does to let the fault tests kill services (docs/compose.md): the API socket into the test
    # container, run as root to use it.
    compose_file["services"]["platform-tests"] |= {"volumes": [f"{docker_socket}:/var/run/docker.sock"],
                                                   "user": "root"}  # fmt: skip
    return compose_file


@contextmanager
def up(
    tmp_path_factory: pytest.TempPathFactory, edit: Callable[[dict[str, Any], Path], None], public_url: str = ""
) -> Iterator[Path]:
    """Render the example config (changed by edit(config, project_folder)) with cubelab's test images, and bring
    it up in the order the depends_on conditions give. Yields the project folder."""
    containers.require_containers()
    use_shared_installs()
    weed = services_env(Path(os.environ["CUBELAB_INSTALL_DIR"]), print) / "bin" / "weed"
    images = containers.stand_ins(tmp_path_factory.mktemp("seaweedfs"), weed)
    stand_ins = {"postgres": images["postgres"], "s3-store": images["seaweedfs"]}
    for name in ("tracking", "hub", "platform-tests"):
        containers.build(name)
    # What DockerSpawner starts for users: images/notebook itself, its kernels built from the lock files.
    containers.build_notebook()
    containers.build_gateway()  # on the notebook image; compose runs it only with dask_gateway.enabled
    project = tmp_path_factory.mktemp("compose")
    config = yaml.safe_load((ROOT / "cubelab.example.yaml").read_text())
    port = free_tcp_port()
    config["containers"] = {"registry": "localhost/cubelab", "tag": "test",
                            "public_url": public_url or f"http://localhost:{port}"}  # fmt: skip
    edit(config, project)
    (project / "cubelab.yaml").write_text(yaml.safe_dump(config))
    path, env, _ = compose.write(load(project / "cubelab.yaml"), project)
    with env.open("a") as fh:
        fh.write(f"CUBELAB_HTTP_PORT={port}\n")
    with containers.docker_api() as socket:
        runnable_file = runnable(yaml.safe_load(path.read_text()), stand_ins, socket.removeprefix("unix://"))
        (project / "podman.yml").write_text(yaml.safe_dump(runnable_file, sort_keys=False))
        name = project.name
        try:
            # The order the depends_on conditions give: s3-identities completed -> s3-store healthy -> s3 (the
            # relay) healthy; postgres healthy; provision completed -> tracking servers, hub and the gateway.
            order = (["postgres", "s3-identities"], ["s3-store"], ["s3"], ["provision"],
                     ["tracking-ocean", "tracking-land", "hub", "dask-gateway"])  # fmt: skip
            for group in ([s for s in g if s in runnable_file["services"]] for g in order):
                started = podman_compose(project, "up", "-d", *group)
                assert started.returncode == 0, started.stdout + started.stderr
                for service in group:
                    container = f"{name}_{service}_1"
                    if runnable_file["services"][service].get("restart") == "no":
                        wait_exited_ok(container)
                    else:
                        wait_healthy(container)
            yield project
        finally:
            podman_compose(project, "down", "-v", timeout=180)
