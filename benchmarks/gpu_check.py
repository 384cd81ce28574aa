"""GPU check of the GPU kernels (issue 15, section 3): in each framework, is the GPU visible, does the toolkit's
trainer run on it, how fast, and how busy is the GPU meanwhile. Prints a markdown table; --out writes JSON.

    python benchmarks/gpu_check.py [--framework torch|keras|all] [--size small|medium] [--out FILE]
        [--python KERNEL_PYTHON ...] [--compare-cpu] [--allow-cpu] [--epochs N] [--batch-size N] [--workers N]

- Runs each asked-for framework that imports in this interpreter; `--python PATH` (repeatable) runs this script
  in another kernel's interpreter as well, for the frameworks that import there, and merges the results.
- Prints the devices seen (torch.cuda.get_device_name, tf.config.list_physical_devices('GPU')). No GPU: a
  "no GPU visible to <framework>: ..." message and exit status 1, unless --allow-cpu (then it runs on the CPU).
- Builds the toolkit's synthetic cube (`synthetic_cube`, `with_split`, `chunked`) and runs
  `train_torch(device=...)` / `train_keras` with tracking off (no mlflow, no TensorBoard), after an untimed
  warm-up on a tiny cube. samples/s = training samples per epoch x epochs run / the trainer's wall time (which
  includes its scaler fit, data loading and the test-split evaluation each epoch).
- Samples GPU utilisation and memory used every 0.2 s in a thread (pynvml if importable, else nvidia-smi):
  median and max utilisation, peak memory. --compare-cpu runs the same training on the CPU for a ratio.
The repository's kernels/toolkit goes first on sys.path, so the toolkit measured is this checkout's.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOOLKIT = Path(__file__).resolve().parent.parent / "kernels" / "toolkit"
if TOOLKIT.is_dir():
    sys.path.insert(0, str(TOOLKIT))

FRAMEWORKS = {"torch": "torch", "keras": "tensorflow"}  # framework -> the module it needs
FEATURES = ["air_temperature_2m", "net_radiation", "precipitation"]
TARGET = "land_surface_temperature"
SMI_QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Size:
    years: int
    resolution: float  # degrees; the cube spans 60S-60N, all longitudes
    epochs: int


SIZES = {"small": Size(years=1, resolution=2.0, epochs=2), "medium": Size(years=2, resolution=0.5, epochs=2)}


# ---- pure logic (unit-tested) ----


def pick_frameworks(requested: str, importable: Iterable[str], done: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(to run here, not runnable here) for --framework `requested`, given the frameworks whose modules import in
    this interpreter and those another interpreter already ran."""
    wanted = list(FRAMEWORKS) if requested == "all" else [requested]
    if any(w not in FRAMEWORKS for w in wanted):
        raise ValueError(f"framework must be one of {[*FRAMEWORKS, 'all']}, not {requested!r}")
    todo = [w for w in wanted if w not in set(done)]
    here = set(importable)
    return [w for w in todo if w in here], [w for w in todo if w not in here]


def parse_smi(text: str, index: int = 0) -> tuple[float, float] | None:
    """(utilisation %, memory used MiB) of GPU `index` from nvidia-smi's csv,noheader,nounits lines."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if index >= len(lines):
        return None
    try:
        util, memory = (float(v) for v in lines[index].split(","))
    except ValueError:  # "[N/A]" or "[Not Supported]"
        return None
    return util, memory


def summarise_util(readings: list[tuple[float, float]]) -> dict[str, float | int | None]:
    """Median and max utilisation (%) and peak memory used (MiB) of the readings."""
    if not readings:
        return {"util_samples": 0, "util_median": None, "util_max": None, "mem_peak_mib": None}
    utils = [u for u, _ in readings]
    return {"util_samples": len(readings), "util_median": statistics.median(utils), "util_max": max(utils),
            "mem_peak_mib": max(m for _, m in readings)}  # fmt: skip


def rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else float("nan")


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table of the results, one row per framework."""
    rows = ["| framework | device | batch | epochs | samples/s | CPU samples/s | ratio | GPU util median / max % "
            "| peak GPU MiB | wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in results:
        cpu = r.get("cpu") or {}
        util = f"{_num(r.get('util_median'), '.0f')} / {_num(r.get('util_max'), '.0f')}"
        rows.append(
            f"| {r['framework']} {r['version']} | {r['device_name']} | {r['batch_size']} | {r['epochs']} "
            f"| {_num(r['samples_per_s'], ',.0f')} | {_num(cpu.get('samples_per_s'), ',.0f')} "
            f"| {_num(r.get('gpu_vs_cpu'), '.2f')} | {util} | {_num(r.get('mem_peak_mib'), ',.0f')} "
            f"| {_num(r['wall_s'], '.1f')} |"
        )
    return "\n".join(rows)


# ---- GPU utilisation sampling ----


class UtilSampler:
    """Samples GPU `index`'s utilisation and memory used every `interval` s in a thread while in its `with`."""

    def __init__(self, index: int = 0, interval: float = 0.2) -> None:
        self.index, self.interval = index, interval
        self.readings: list[tuple[float, float]] = []
        self.backend: str | None = None
        self.nvml_error: str | None = None
        self._read: Callable[[], tuple[float, float] | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self) -> None:
        if importlib.util.find_spec("pynvml"):
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)

                def nvml() -> tuple[float, float]:
                    util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    return float(util), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

                self.backend, self._read = "pynvml", nvml
                return
            except Exception as error:  # noqa: BLE001 - no driver or no such GPU: try nvidia-smi
                self.nvml_error = repr(error)
        if shutil.which("nvidia-smi"):

            def smi() -> tuple[float, float] | None:
                done = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=5, check=False)
                return parse_smi(done.stdout, self.index) if done.returncode == 0 else None

            self.backend, self._read = "nvidia-smi", smi

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reading = self._read() if self._read else None
            except Exception:  # noqa: BLE001 - one failed reading is skipped, not fatal
                reading = None
            if reading is not None:
                self.readings.append(reading)

    def __enter__(self) -> UtilSampler:
        self._open()
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, name="gpu-util", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        return {"util_backend": self.backend, **summarise_util(self.readings)}


# ---- the workload ----


def make_cube(size: Size, seed: int = 0) -> tuple[Any, int]:
    """The toolkit's synthetic cube with a block split, chunked as ESDC time series, and its number of training
    samples (finite target and features, train split)."""
    import numpy as np

    from cubelab_toolkit.cube import chunked, synthetic_cube
    from cubelab_toolkit.splits import TRAIN, with_split

    ds = with_split(synthetic_cube(years=size.years, resolution=size.resolution, seed=seed), "block", seed=seed)
    keep = np.isfinite(ds[TARGET].values) & (ds["split"].values == TRAIN)
    for name in FEATURES:
        keep &= np.isfinite(ds[name].values)
    return chunked(ds, "timeseries", block=64), int(keep.sum())


TINY = Size(years=1, resolution=8.0, epochs=1)


def run_torch(size: Size, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cubelab_toolkit.train_torch import train_torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}): GPUs seen: {names or 'none'}", flush=True)
    if not names:
        _no_gpu("torch", f"torch.cuda.device_count() is 0 (torch {torch.__version__}, CUDA {torch.version.cuda})", args)

    def train(device: str, cube: Any, epochs: int) -> tuple[float, int, float]:
        t0 = time.perf_counter()
        result = train_torch(cube, FEATURES, TARGET, epochs=epochs, batch_size=args.batch_size, patience=epochs,
                             workers=args.workers, device=device)  # fmt: skip
        return time.perf_counter() - t0, len(result.history), result.test_rmse

    device = "cuda" if names else "cpu"
    cube, per_epoch = make_cube(size)
    train(device, make_cube(TINY)[0], 1)  # warm-up: CUDA context, cuBLAS, allocator
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with UtilSampler() as sampler:
        wall, epochs, rmse = train(device, cube, size.epochs)
    extra = {"torch_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20} if device == "cuda" else {}
    out = _result("torch", torch.__version__, names, device, names[0] if names else "cpu", per_epoch, epochs, wall,
                  rmse, args, sampler.summary(), extra)  # fmt: skip
    if args.compare_cpu:  # on a machine with no GPU (--allow-cpu) too: CPU against CPU, the code path tested
        print("torch: the same training on the CPU", flush=True)
        _add_cpu(out, *train("cpu", cube, size.epochs), per_epoch, torch.get_num_threads())
    return out


def run_keras(size: Size, args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    from cubelab_toolkit.train_keras import train_keras

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    print(f"tensorflow {tf.__version__}: GPUs seen: {[g.name for g in gpus] or 'none'} {names}", flush=True)
    if not gpus:
        _no_gpu("keras", f"tf.config.list_physical_devices('GPU') is empty (tensorflow {tf.__version__})", args)

    def train(device: str, cube: Any, epochs: int) -> tuple[float, int, float]:
        t0 = time.perf_counter()
        with tf.device(device):
            result = train_keras(cube, FEATURES, TARGET, epochs=epochs, batch_size=args.batch_size, patience=epochs)
        return time.perf_counter() - t0, len(result.history.get("loss", [])), result.test_rmse

    device = "/GPU:0" if gpus else "/CPU:0"
    cube, per_epoch = make_cube(size)
    train(device, make_cube(TINY)[0], 1)
    with UtilSampler() as sampler:
        wall, epochs, rmse = train(device, cube, size.epochs)
    extra = {}
    if gpus:
        extra["tf_peak_mib"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    out = _result("keras", f"{tf.__version__} (keras {_version('keras')})", names, device,
                  names[0] if names else "cpu", per_epoch, epochs, wall, rmse, args,
                  sampler.summary(), extra)  # fmt: skip
    if args.compare_cpu:
        print("keras: the same training on the CPU (tf.device('/CPU:0'))", flush=True)
        _add_cpu(out, *train("/CPU:0", cube, size.epochs), per_epoch, None)
    return out


RUNNERS: dict[str, Callable[[Size, argparse.Namespace], dict[str, Any]]] = {"torch": run_torch, "keras": run_keras}


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


def _no_gpu(framework: str, why: str, args: argparse.Namespace) -> None:
    """Raises NoGpu, unless --allow-cpu (then says so and the run goes on, on the CPU)."""
    message = f"no GPU visible to {framework}: {why}"
    if not args.allow_cpu:
        raise NoGpu(message)
    print(f"{message}; --allow-cpu: running on the CPU", flush=True)


class NoGpu(RuntimeError):
    pass


def _result(
    framework: str,
    version: str,
    names: list[str],
    device: str,
    device_name: str,
    per_epoch: int,
    epochs: int,
    wall: float,
    rmse: float,
    args: argparse.Namespace,
    util: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "framework": framework, "version": version, "python": platform.python_version(), "gpus": names,
        "device": device, "device_name": device_name, "on_gpu": bool(names), "batch_size": args.batch_size,
        "epochs": epochs, "train_samples_per_epoch": per_epoch, "samples": per_epoch * epochs, "wall_s": wall,
        "samples_per_s": rate(per_epoch * epochs, wall), "test_rmse": rmse, **util, **extra,
    }  # fmt: skip


def _add_cpu(out: dict[str, Any], wall: float, epochs: int, rmse: float, per_epoch: int, threads: int | None) -> None:
    out["cpu"] = {"wall_s": wall, "epochs": epochs, "samples_per_s": rate(per_epoch * epochs, wall),
                  "test_rmse": rmse, "threads": threads}  # fmt: skip
    out["gpu_vs_cpu"] = out["samples_per_s"] / out["cpu"]["samples_per_s"]


# ---- command line ----


def in_other_python(python: str, args: argparse.Namespace) -> dict[str, Any]:
    """This script in another interpreter (a kernel's), its JSON read back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        command = [python, __file__, "--framework", args.framework, "--size", args.size, "--out", str(out),
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers)]  # fmt: skip
        command += ["--epochs", str(args.epochs)] if args.epochs else []
        command += [f for f, on in (("--allow-cpu", args.allow_cpu), ("--compare-cpu", args.compare_cpu)) if on]
        print(f"[{python}] {' '.join(command[1:])}", flush=True)
        code = subprocess.run(command, check=False).returncode
        report = json.loads(out.read_text()) if out.exists() else {}
    if code and not report.get("errors"):
        report.setdefault("errors", []).append(f"{python} exited with status {code}")
    return report


def importable_frameworks() -> list[str]:
    return [f for f, module in FRAMEWORKS.items() if importlib.util.find_spec(module)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=[*FRAMEWORKS, "all"], default="all")
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--python", action="append", default=[], help="another kernel's python (repeatable)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no GPU is visible (tests)")
    parser.add_argument("--compare-cpu", action="store_true", help="also train on the CPU, for a ratio")
    parser.add_argument("--epochs", type=int, help="override the size's epochs")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0, help="torch DataLoader workers")
    args = parser.parse_args(argv)
    base = SIZES[args.size]
    size = Size(base.years, base.resolution, args.epochs or base.epochs)

    results: list[dict[str, Any]] = []
    errors: list[str] = []
    attempted: list[str] = []
    for python in args.python:
        report = in_other_python(python, args)
        results += report.get("results", [])
        errors += report.get("errors", [])
        attempted += report.get("attempted", [])
    here, missing = pick_frameworks(args.framework, importable_frameworks(), attempted)
    attempted += here
    for framework in here:
        try:
            results.append(RUNNERS[framework](size, args))
        except NoGpu as error:
            print(error, file=sys.stderr, flush=True)
            errors.append(str(error))
    skipped = [f"{f}: {FRAMEWORKS[f]} does not import in {sys.executable}" for f in missing]
    if args.framework != "all" or not attempted:
        errors += skipped
    report = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
        "cpu_count": _cpu_count(), "command": ["benchmarks/gpu_check.py", *(argv or sys.argv[1:])],
        "size": {"name": args.size, **vars(size), "features": FEATURES, "target": TARGET},
        "attempted": attempted, "results": results, "skipped": skipped, "errors": errors,
    }  # fmt: skip
    print("\n" + table(results))
    for line in dict.fromkeys(skipped + errors):  # once each: a skip can be an error too
        print(f"- {line}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if errors or not results else 0


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
