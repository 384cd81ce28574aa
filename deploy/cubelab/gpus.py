"""NVIDIA GPUs of the machine the embedded stack runs on, and what they change: the PyTorch and TensorFlow kernels
get CUDA builds and say so in their names.

Found with `nvidia-smi` (the driver's own tool: no GPU, no driver or a failing driver all read as no GPU), or
forced by the config's `kernels.cuda` (true: CUDA builds even where nvidia-smi finds nothing, e.g. a machine
whose driver comes later; false: CPU builds even with a GPU). The CUDA builds are the same releases as the CPU
builds the environment files pin, so a notebook sees the same APIs on both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

QUERY = "index,name,memory.total,driver_version"
# The environment files' CPU pins -> the same release's CUDA build. PyPI's torch for Linux is the CUDA build
# (2.13.0: CUDA 13.0, which needs an NVIDIA driver >= 580); `===` asks for exactly that version, without a local
# label, since `==2.13.0` also matches a +cpu wheel a package source may hold. TensorFlow's CUDA libraries come
# with its and-cuda extra.
CUDA_BUILDS = ((re.compile(r"^torch==([^+\s]+)\+cpu$"), r"torch===\1"),
               (re.compile(r"^tensorflow-cpu==(\S+)$"), r"tensorflow[and-cuda]==\1"))  # fmt: skip


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    driver: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(timeout: float = 10) -> list[Gpu]:
    """The GPUs nvidia-smi lists; none when it is missing, fails or times out."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return []
    try:
        done = subprocess.run([program, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    gpus = []
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        memory = int(parts[2]) if parts[2].isdigit() else 0
        gpus.append(Gpu(int(parts[0]), parts[1], memory, parts[3]))
    return gpus


def use_cuda(setting: bool | str, found: list[Gpu]) -> bool:
    """Whether kernels get CUDA builds: kernels.cuda true or false decides; auto follows what nvidia-smi found."""
    return bool(found) if setting == "auto" else bool(setting)


def cuda_requirements(pip: list[str]) -> list[str] | None:
    """A kernel's requirements with its framework's CUDA build; None when the kernel has no GPU framework."""
    out, changed = [], False
    for line in pip:
        new = line
        for pattern, replacement in CUDA_BUILDS:
            new = pattern.sub(replacement, new)
        changed |= new != line
        out.append(new)
    return out if changed else None


def gpu_display_name(display: str) -> str:
    """'Python 3 (PyTorch, cubelab)' -> 'Python 3 (PyTorch, GPU, cubelab)': users see which kernels use the GPU."""
    head, sep, tail = display.rpartition(", cubelab)")
    return f"{head}, GPU{sep}{tail}" if sep else f"{display} [GPU]"


def describe(gpus: list[Gpu]) -> str:
    if not gpus:
        return "GPUs: none found (nvidia-smi)"
    return "GPUs: " + "; ".join(f"{g.index}: {g.name}, {g.memory_mib} MiB, driver {g.driver}" for g in gpus)
