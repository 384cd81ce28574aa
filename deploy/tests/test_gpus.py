"""GPU selection on the embedded stack (cubelab.gpus), with a stand-in nvidia-smi on PATH: what is found, when the
PyTorch and TensorFlow kernels get CUDA builds (never from the CPU lock files), how they are named, and what
`cubelab status` shows. The CUDA builds themselves are not installed here (several GB, no GPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cubelab import gpus, install, locks
from cubelab.locks import kernel_requirements

ROOT = Path(__file__).resolve().parents[2]
H200 = "0, NVIDIA H200, 143771, 570.124.06\n1, NVIDIA H200, 143771, 570.124.06\n"


@pytest.fixture
def nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Puts a stand-in nvidia-smi first on PATH that prints what it is given (and exits with the given status);
    checks it is asked the query cubelab relies on."""
    folder = tmp_path / "bin"
    folder.mkdir()

    def install_stand_in(output: str, status: int = 0) -> None:
        script = folder / "nvidia-smi"
        script.write_text("#!/bin/sh\n"
                          f'[ "$1" = "--query-gpu={gpus.QUERY}" ] && [ "$2" = "--format=csv,noheader,nounits" ] '
                          "|| { echo unexpected arguments >&2; exit 64; }\n"
                          f"printf '%s' '{output}'\nexit {status}\n")  # fmt: skip
        script.chmod(0o755)

    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return install_stand_in


def test_gpus_are_read_from_nvidia_smi(nvidia_smi) -> None:
    nvidia_smi(H200)
    found = gpus.detect()
    assert found == [gpus.Gpu(0, "NVIDIA H200", 143771, "570.124.06"), gpus.Gpu(1, "NVIDIA H200", 143771, "570.124.06")]
    assert "0: NVIDIA H200, 143771 MiB, driver 570.124.06" in gpus.describe(found)


@pytest.mark.parametrize("output,status", [
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9),
    ("No devices were found\n", 6),
    ("", 0),
])  # fmt: skip
def test_a_failing_or_empty_nvidia_smi_is_no_gpu(nvidia_smi, output: str, status: int) -> None:
    nvidia_smi(output, status)
    assert gpus.detect() == []


def test_no_nvidia_smi_is_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpus.detect() == []


def test_the_config_decides_or_follows_the_machine() -> None:
    one = [gpus.Gpu(0, "NVIDIA A100", 40960, "550")]
    assert gpus.use_cuda("auto", one) and not gpus.use_cuda("auto", [])
    assert gpus.use_cuda(True, []) and not gpus.use_cuda(False, one)


def test_cuda_builds_replace_the_cpu_pins_of_the_same_release() -> None:
    specs = {p.parent.name: p for p in install.kernel_specs()}
    _, torch = kernel_requirements(specs["pytorch"])
    _, tf = kernel_requirements(specs["tensorflow"])
    _, sk = kernel_requirements(specs["sklearn"])
    cuda_torch, cuda_tf = gpus.cuda_requirements(torch), gpus.cuda_requirements(tf)
    assert cuda_torch and "torch===2.13.0" in cuda_torch and not any("+cpu" in r for r in cuda_torch)
    assert cuda_tf and "tensorflow[and-cuda]==2.21.0" in cuda_tf and "tensorflow-cpu==2.21.0" not in cuda_tf
    assert [r for r in cuda_torch if "torch" not in r] == [r for r in torch if "torch" not in r]  # nothing else
    assert gpus.cuda_requirements(sk) is None  # no GPU framework: the same kernel either way
    # The lock files hold the CPU builds: a CUDA kernel is installed with pip, never from a CPU lock.
    text = "\n".join(cuda_torch) + "\n"
    assert locks.lock_for("kernel-pytorch", "3.11.7", text) is None
    assert locks.lock_for("kernel-pytorch", "3.11.7", "\n".join(torch) + "\n") is not None


def test_gpu_kernels_are_named_as_such() -> None:
    assert gpus.gpu_display_name("Python 3 (PyTorch, cubelab)") == "Python 3 (PyTorch, GPU, cubelab)"
    assert gpus.gpu_display_name("Keras") == "Keras [GPU]"


def test_a_cuda_kernel_is_registered_under_its_gpu_name(tmp_path: Path) -> None:
    """register_kernel hands the GPU name to `ipykernel install` (a stand-in here that writes the kernelspec as
    ipykernel does; every stack test runs the real one), and a later CPU install names it back."""
    spec = next(p for p in install.kernel_specs() if p.parent.name == "pytorch")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text(f"""#!{sys.executable}
import json, sys, pathlib
args = sys.argv[1:]
assert args[:2] == ["-m", "ipykernel"] and args[2] == "install", args
opts = dict(zip(args[3::2], args[4::2]))
folder = pathlib.Path(opts["--prefix"], "share/jupyter/kernels", opts["--name"])
folder.mkdir(parents=True, exist_ok=True)
(folder / "kernel.json").write_text(json.dumps({{"display_name": opts["--display-name"]}}))
""")  # fmt: skip
    (venv / "bin/python").chmod(0o755)
    kernel_json = tmp_path / "hub/share/jupyter/kernels/cubelab-pytorch/kernel.json"
    install.register_kernel(tmp_path, spec, venv, tmp_path / "hub", print, cuda=True)
    assert json.loads(kernel_json.read_text())["display_name"] == "Python 3 (PyTorch, GPU, cubelab)"
    install.register_kernel(tmp_path, spec, venv, tmp_path / "hub", print, cuda=False)
    assert json.loads(kernel_json.read_text())["display_name"] == "Python 3 (PyTorch, cubelab)"


def test_cubelab_status_shows_the_gpus(nvidia_smi, tmp_path: Path) -> None:
    nvidia_smi(H200)
    config = tmp_path / "cubelab.yaml"
    config.write_text("state_dir: state\nusers: [{name: alice}]\nteams: [{name: ocean, members: [alice]}]\n")
    cli = [str(Path(sys.executable).parent / "cubelab"), "-c", str(config), "status"]
    done = subprocess.run([*cli, "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stderr  # nothing runs: unhealthy, but the GPUs are there
    assert [g["name"] for g in json.loads(done.stdout)["gpus"]] == ["NVIDIA H200", "NVIDIA H200"]
    text = subprocess.run(cli, capture_output=True, text=True, check=False).stdout
    assert "GPUs: 0: NVIDIA H200, 143771 MiB" in text


def _dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), re.M))


def test_the_cuda_image_installs_the_releases_the_kernel_files_pin() -> None:
    """images/notebook/cuda swaps in CUDA builds of the releases kernels/*/environment.yml pin, as the embedded
    stack does (cubelab.gpus): a pin moved in one place and not the other fails here."""
    args = _dockerfile_args(ROOT / "images/notebook/cuda/Dockerfile")
    specs = {p.parent.name: p for p in install.kernel_specs()}
    torch = gpus.cuda_requirements(kernel_requirements(specs["pytorch"])[1]) or []
    tf = gpus.cuda_requirements(kernel_requirements(specs["tensorflow"])[1]) or []
    assert f"torch==={args['TORCH_VERSION']}" in torch
    assert f"tensorflow[and-cuda]=={args['TENSORFLOW_VERSION']}" in tf
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")


@pytest.mark.parametrize("kernel", ["pytorch", "tensorflow"])
def test_the_cuda_builds_exist_for_linux_and_python_311(kernel: str, tmp_path: Path) -> None:
    """The GPU kernels' requirements resolve from the package sources for CPython 3.11 on x86_64 Linux, with the
    CUDA runtime libraries among them (uv reads the packages' metadata; nothing is installed). PyTorch's own CUDA
    index, which the image uses, cannot be reached here: this checks PyPI's build of the same release."""
    uv = locks.uv_binary()
    assert uv, "uv is a dependency of cubelab"
    spec = next(p for p in install.kernel_specs() if p.parent.name == kernel)
    requirements = tmp_path / "cuda.in"
    requirements.write_text("\n".join(gpus.cuda_requirements(kernel_requirements(spec)[1]) or []) + "\n")
    done = subprocess.run(
        [uv, "pip", "compile", str(requirements), "--constraint", str(locks.CONSTRAINTS), "--python-version",
         locks.PYTHON, "--python-platform", locks.PLATFORM, "--no-header", "--no-annotate", *locks.pip_sources()],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runtime = [line for line in done.stdout.splitlines() if line.startswith("nvidia-cuda-runtime")]
    assert runtime, done.stdout[-2000:]
    assert "+cpu" not in done.stdout  # never the CPU build a package source also holds
    print(f"{kernel}: {runtime[0]}")
