"""images/notebook, checked from inside the container as docker-stacks checks its images: the kernelspecs
JupyterLab lists, each kernel's framework, toolkit and mlflow, the TensorBoard proxy, the user and the notebooks.

Built here with KERNEL_ENVS=venv (conda-forge and quay.io are not reachable); a conda build gets the same checks
and one kernel more (xcube), which the image's label tells. The notebooks run in these kernels against a running
deployment in deploy/tests/test_compose_run.py, whose users' containers are this image.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import podman_images as containers  # deploy/tests/podman_images.py
import pytest
import yaml

from cubelab import locks

KERNELS = Path(__file__).resolve().parents[3] / "kernels"
# What each kernel is for: the module its users come for, imported with the toolkit, mlflow and what DeepESDL's
# notebooks import. A kernel added to kernels/ without an entry here fails test_every_kernel_is_checked.
FRAMEWORK = {"sklearn": "sklearn", "pytorch": "torch", "tensorflow": "tensorflow", "xcube": "xcube"}


@pytest.fixture(scope="module")
def image() -> str:
    containers.require_containers()
    return containers.build_notebook()


def run(image: str, *command: str, timeout: float = 300) -> str:
    return containers.podman("run", "--rm", "--network", "none", image, *command, timeout=timeout).stdout


def expected_kernels(image: str) -> dict[str, str]:
    """kernelspec name -> display name, for the kernels this build has (conda: all; venv: pip-installable)."""
    label = containers.podman("image", "inspect", image, "--format",
                              '{{index .Config.Labels "org.cubelab.kernel-envs"}}').stdout.strip()  # fmt: skip
    assert label in ("conda", "venv"), label
    specs = locks.kernel_specs(conda_only=label == "conda")
    return {f"cubelab-{s.parent.name}": yaml.safe_load(s.read_text())["display_name"] for s in specs}


def test_every_kernel_is_checked() -> None:
    assert {s.parent.name for s in locks.kernel_specs(conda_only=True)} == set(FRAMEWORK)


def test_jupyterlab_lists_the_kernels_of_kernels_folder(image: str) -> None:
    listed = json.loads(run(image, "jupyter", "kernelspec", "list", "--json"))["kernelspecs"]
    cubelab = {name: spec["spec"]["display_name"] for name, spec in listed.items() if name.startswith("cubelab-")}
    assert cubelab == expected_kernels(image)
    for name in cubelab:  # system-wide, where a mounted home cannot hide them
        assert listed[name]["resource_dir"].startswith("/opt/conda/share/jupyter/kernels/"), listed[name]


@pytest.mark.parametrize("kernel", sorted(FRAMEWORK))
def test_each_kernel_imports_its_framework_the_toolkit_and_mlflow(image: str, kernel: str) -> None:
    if f"cubelab-{kernel}" not in expected_kernels(image):
        pytest.skip(f"{kernel}: conda-forge only, not in this (venv) build")
    python = f"/opt/conda/envs/cubelab-{kernel}/bin/python"
    code = (f"import {FRAMEWORK[kernel]}, cubelab_toolkit, mlflow, ml4xcube.datasets.xr_dataset, global_land_mask; "
            "import mlflow.version, sys; print(sys.prefix, mlflow.version.VERSION)")  # fmt: skip
    out = run(image, python, "-c", code).strip().splitlines()[-1]
    prefix, version = out.split()
    assert prefix == f"/opt/conda/envs/cubelab-{kernel}"
    assert version == locks.CONSTRAINTS.read_text().split("mlflow==")[1].split()[0]


def test_runs_as_jovyan_with_the_notebooks_in_its_home(image: str) -> None:
    out = run(image, "bash", "-c", "id -u; id -g; echo $HOME; cd ~ && ls").split()
    assert out[:3] == ["1000", "100", "/home/jovyan"]
    repository = {p.name for p in KERNELS.glob("*/*.ipynb")}
    assert repository and repository <= set(out[3:])
    # Nothing in the home shadows a package for a kernel started there (python puts its folder first on sys.path).
    assert not set(out[3:]) & {*FRAMEWORK.values(), "mlflow", "cubelab_toolkit", "ml4xcube"}, out[3:]


@pytest.fixture(scope="module")
def server(image: str) -> Iterator[tuple[str, str]]:
    """JupyterLab running in the container (as `docker run` starts it), with a token of this test's."""
    token, name = secrets.token_hex(16), f"cubelab-nb-{secrets.token_hex(4)}"
    containers.podman("run", "-d", "--name", name, "--network", "none", image, "start-notebook.py",
                      f"--IdentityProvider.token={token}", "--ServerApp.port=8888")  # fmt: skip
    try:
        yield name, token
    finally:
        containers.podman("rm", "-f", name, check=False)


def fetch(server: tuple[str, str], path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:8888{path} from inside the container with the token: (status, body)."""
    name, token = server
    headers = {"Authorization": f"token {token}"}
    code = ("import sys, urllib.request, urllib.error\n"
            f"req = urllib.request.Request('http://127.0.0.1:8888{path}', headers={headers!r})\n"
            "try:\n    r = urllib.request.urlopen(req, timeout=30); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n"
            "except OSError as e:\n    print(0); print(e)\n")  # fmt: skip
    out = containers.podman("exec", name, "python3", "-c", code, check=False).stdout
    status, _, body = out.partition("\n")
    return int(status or 0), body


def test_the_tensorboard_proxy_shows_a_run_a_kernel_wrote(image: str, server: tuple[str, str]) -> None:
    name, _ = server
    if "cubelab-pytorch" not in expected_kernels(image):
        pytest.skip("no PyTorch kernel in this build")
    writer = ("import os\nfrom torch.utils.tensorboard import SummaryWriter\n"
              "w = SummaryWriter(os.path.expanduser('~/tensorboard/image-check'))\n"
              "w.add_scalar('loss', 0.5, 0)\nw.close()\n")  # fmt: skip
    containers.podman("exec", name, "/opt/conda/envs/cubelab-pytorch/bin/python", "-c", writer, timeout=300)
    deadline, status, body = time.monotonic() + 120, 0, ""
    while time.monotonic() < deadline:  # the first request starts TensorBoard behind the proxy
        status, body = fetch(server, "/tensorboard/data/runs")
        if status == 200 and "image-check" in body:
            break
        time.sleep(2)
    assert status == 200 and json.loads(body) == ["image-check"], (status, body[:500])
    assert fetch(server, "/api/kernelspecs")[0] == 200
