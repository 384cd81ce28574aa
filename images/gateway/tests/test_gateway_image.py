"""images/gateway, checked from inside the container with the compose file's capabilities: the gateway (root)
makes a member's account, hands a cluster's folder to it, starts a process as it, stops it and removes the folder,
and each capability the compose file leaves it is needed for one of those steps. The whole gateway runs in
deploy/tests/test_compose_run.py (platform_tests/test_gateway.py inside the compose deployment)."""

from __future__ import annotations

import ast

import podman_images as containers  # deploy/tests/podman_images.py
import pytest

from cubelab.backends import compose

# What the gateway does as root for a member's cluster, step by step (cubelab.gateway.container, TeamLocalBackend
# and dask-gateway's LocalBackend): prints each step's outcome.
STEPS = """
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
from cubelab.gateway.container import ContainerLocalBackend

out, state = {}, {}
def step(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"

backend = ContainerLocalBackend(account_prefix="cl-")
workdir = Path("/var/lib/cubelab-clusters/c1")
step("account", lambda: state.setdefault("entry", backend.account("alice")))
step("folder", lambda: (workdir.mkdir(mode=0o700), (workdir / "tls.pem").write_text("key")))
step("chown", lambda: backend.set_file_permissions([str(workdir)], "alice"))
def start():
    entry = state["entry"]
    def become():
        os.setgid(entry.pw_gid); os.initgroups(entry.pw_name, entry.pw_gid); os.setuid(entry.pw_uid)
        os.chdir(workdir)
    code = "import os, time; open('scratch', 'w').write(str(os.getuid())); time.sleep(60)"
    state["proc"] = subprocess.Popen([sys.executable, "-c", code], preexec_fn=become)
    time.sleep(1.5)
step("start", start)
step("stop", lambda: (os.kill(state["proc"].pid, signal.SIGTERM), state["proc"].wait(10)))
step("remove", lambda: shutil.rmtree(workdir))
print(repr(out))
"""


@pytest.fixture(scope="module")
def image() -> str:
    containers.require_containers()
    containers.build_notebook()
    return containers.build_gateway()


def steps(image: str, capabilities: list[str]) -> dict[str, str]:
    adds = [arg for cap in capabilities for arg in ("--cap-add", cap)]
    done = containers.podman("run", "--rm", "--network", "none", "--user", "root", "--cap-drop", "ALL", *adds,
                             "--security-opt", "no-new-privileges", image,
                             "/opt/gateway/bin/python", "-c", STEPS, timeout=120)  # fmt: skip
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_the_compose_capabilities_run_a_members_cluster_and_each_is_needed(image: str) -> None:
    allowed = compose.GATEWAY_CAPABILITIES
    assert set(steps(image, allowed).values()) == {"ok"}
    for capability in allowed:
        fewer = steps(image, [c for c in allowed if c != capability])
        assert set(fewer.values()) != {"ok"}, f"{capability} is not needed: {fewer}"


def test_the_image_has_the_gateway_and_the_kernels_dask(image: str) -> None:
    code = "import dask_gateway_server, cubelab.gateway.container; print(dask_gateway_server.__version__)"
    done = containers.podman("run", "--rm", "--network", "none", image, "/opt/gateway/bin/python", "-c", code)
    assert done.stdout.strip().splitlines()[-1] == "2026.3.0"
    dask = containers.podman("run", "--rm", "--network", "none", image,
                             "/opt/conda/envs/cubelab-sklearn/bin/dask", "--version")  # fmt: skip
    assert "dask" in dask.stdout
