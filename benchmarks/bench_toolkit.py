"""Benchmarks of the in-kernel toolkit (issue 4's targets). Prints a markdown table.

    .venv/bin/python benchmarks/bench_toolkit.py [--rounds 3] [--json FILE]

- samples/s from a zarr cube (184 x 270 x 270 in (46, 90, 90) chunks, one feature and one target, NaNs in both)
  into torch batches and into tf.data, vs plain zarr read+decompress of the same chunks (the ceiling), from
  local disk and from S3;
- logging a ~100 MB zarr store of ~1,000 chunks: the toolkit (straight to the run's S3 location) vs s3fs put
  vs plain mlflow.log_artifacts, same run; reading it back: toolkit vs mlflow's own download;
- peak memory (RSS) of a process streaming a cube several times larger than that.
- with ML4XCUBE_PYTHON set to the Python of a separate environment holding ml4xcube 1.1.0 (it needs
  xarray 2026.7 and zarr 2: `python3 -m venv /tmp/ml4 && /tmp/ml4/bin/pip install ml4xcube==1.1.0 xarray==2026.7.0`),
  ml4xcube's XrDataset on a zarr-format-2 copy of the same cube, next to the toolkit on that copy.
ml4xcube is never a dependency of cubelab.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
from report import report
from scratch import ScratchStacks

SHAPE, CHUNKS = (184, 270, 270), (46, 90, 90)


def make_cube(shape: tuple[int, int, int] = SHAPE, chunks: tuple[int, int, int] = CHUNKS, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t2m = rng.normal(15, 8, size=shape).astype("float32")
    lst = (1.1 * t2m + 275 + rng.normal(0, 0.8, size=shape)).astype("float32")
    lst[rng.random(shape) < 0.3] = np.nan
    t2m[rng.random(shape) < 0.05] = np.nan
    dims = ("time", "lat", "lon")
    ds = xr.Dataset({"air_temperature_2m": (dims, t2m), "land_surface_temperature": (dims, lst)})
    return ds.chunk(dict(zip(dims, chunks, strict=True)))


def raw_zarr_rate(url: str, storage_options: dict[str, Any] | None) -> float:
    """Valid samples/s reading and decompressing every chunk of both arrays with zarr itself."""
    group = zarr.open_group(url, mode="r", storage_options=storage_options)
    a, b = group["air_temperature_2m"], group["land_surface_temperature"]
    t0, valid = time.perf_counter(), 0
    for index in np.ndindex(*a.cdata_shape):
        sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, a.chunks, strict=True))
        x, y = a[sel], b[sel]
        valid += int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    return valid / (time.perf_counter() - t0)


def torch_rate(ds: xr.Dataset, shuffle: bool = True) -> float:
    from torch.utils.data import DataLoader

    from cubelab_toolkit.scaling import Scaler
    from cubelab_toolkit.train_torch import CubePoints

    scaler = Scaler(mean={"air_temperature_2m": 15.0, "land_surface_temperature": 290.0},
                    std={"air_temperature_2m": 8.0, "land_surface_temperature": 9.0})  # fmt: skip
    data = CubePoints(ds, ["air_temperature_2m"], "land_surface_temperature", scaler, which=None,  # type: ignore[arg-type]
                      batch_size=65536, shuffle=shuffle)  # fmt: skip
    t0, n = time.perf_counter(), 0
    for _, y in DataLoader(data, batch_size=None):
        n += len(y)
    return n / (time.perf_counter() - t0)


def tfdata_rate(ds: xr.Dataset) -> float:
    from cubelab_toolkit.scaling import Scaler
    from cubelab_toolkit.train_keras import dataset

    scaler = Scaler(mean={"air_temperature_2m": 15.0, "land_surface_temperature": 290.0},
                    std={"air_temperature_2m": 8.0, "land_surface_temperature": 9.0})  # fmt: skip
    data = dataset(ds, ["air_temperature_2m"], "land_surface_temperature", scaler, which=None,  # type: ignore[arg-type]
                   batch_size=65536)  # fmt: skip
    t0, n = time.perf_counter(), 0
    for _, y in data:
        n += int(y.shape[0])
    return n / (time.perf_counter() - t0)


TFDATA_CHILD = """
import json, sys
import xarray as xr
sys.path.insert(0, sys.argv[1])
from bench_toolkit import tfdata_rate
args = json.load(sys.stdin)
print(tfdata_rate(xr.open_zarr(args["url"], storage_options=args["options"])))
"""


def tfdata_rate_in_child(url: str, storage_options: dict[str, Any] | None) -> float:
    """tf.data measured in its own process, as it runs in the TensorFlow kernel: importing TensorFlow changes
    the process's allocator settings (it sets M_TRIM_THRESHOLD) and starts thread pools, which slowed the torch
    loaders measured after it in the same process by ~10 %. Credentials go through stdin, not the command line."""
    child = subprocess.run(
        [sys.executable, "-c", TFDATA_CHILD, str(Path(__file__).resolve().parent)],
        input=json.dumps({"url": url, "options": storage_options}), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(child.stdout.strip().splitlines()[-1])


def bench_sampling(url: str, storage_options: dict[str, Any] | None, rounds: int, label: str) -> dict[str, float]:
    ds = xr.open_zarr(url, storage_options=storage_options)
    raw = statistics.median(raw_zarr_rate(url, storage_options) for _ in range(rounds))
    torch_ = statistics.median(torch_rate(ds) for _ in range(rounds))
    tf_ = statistics.median(tfdata_rate_in_child(url, storage_options) for _ in range(rounds))
    return {f"{label}_raw_zarr_per_s": raw, f"{label}_torch_per_s": torch_, f"{label}_tfdata_per_s": tf_}


ML4XCUBE_CHILD = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import xarray as xr
from ml4xcube.datasets.xr_dataset import XrDataset
ds = xr.open_zarr(sys.argv[1])
t0 = time.perf_counter()
data = XrDataset(ds, rand_chunk=False, drop_nan="auto", apply_mask=False, to_pred=None, scale_fn=None,
                 block_size=[("time", 46), ("lat", 90), ("lon", 90)], sample_size=[("time", 1), ("lat", 1), ("lon", 1)])
out = data.get_datasets()
n = len(next(iter(out.values())))
print(n / (time.perf_counter() - t0))
"""


def bench_ml4xcube(tmp: Path, rounds: int) -> dict[str, float]:
    """ml4xcube's XrDataset vs the toolkit on the same zarr-format-2 cube (ml4xcube's zarr 2 cannot read v3)."""
    python = os.environ.get("ML4XCUBE_PYTHON")
    if not python:
        return {}
    url = str(tmp / "cube-v2.zarr")
    make_cube().to_zarr(url, zarr_format=2, mode="w")
    theirs = statistics.median(
        float(subprocess.run([python, "-c", ML4XCUBE_CHILD, url], capture_output=True, text=True, check=True).stdout)
        for _ in range(rounds)
    )
    ds = xr.open_zarr(url)
    ours = statistics.median(torch_rate(ds) for _ in range(rounds))
    # The same work as XrDataset (which does not shuffle): the samples in cube order.
    ours_in_order = statistics.median(torch_rate(ds, shuffle=False) for _ in range(rounds))
    return {"v2_ml4xcube_xrdataset_per_s": theirs, "v2_toolkit_torch_per_s": ours,
            "v2_toolkit_torch_unshuffled_per_s": ours_in_order}  # fmt: skip


def bench_zarr_logging(backend: Any, rounds: int) -> dict[str, float]:
    import mlflow
    import s3fs

    from cubelab_toolkit import download_artifacts, load_zarr, log_zarr_store
    from cubelab_toolkit.artifacts import s3_options

    team = backend.config.teams[0]
    creds = backend.s3.team_credentials(team)
    os.environ.update({
        "CUBELAB_ARTIFACT_ROOT": f"s3://{backend.config.bucket(team)}/{backend.config.storage.artifact_prefix}",
        "AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_ENDPOINT_URL_S3": backend.s3.url, "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_TOKEN": backend.hub.issue_token(team.members[0]),
    })  # fmt: skip
    mlflow.set_tracking_uri(backend.tracking.url(team))
    mlflow.set_experiment("bench-toolkit")
    fs = s3fs.S3FileSystem(**s3_options())
    timings: dict[str, list[float]] = {"toolkit": [], "s3fs": [], "mlflow": [], "read_toolkit": [], "read_mlflow": []}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        data = rng.random((64, 256, 1600), dtype=np.float32)
        store = Path(tmp) / "cube.zarr"
        cube = xr.Dataset({"lst": (("time", "lat", "lon"), data)}).chunk({"time": 4, "lat": 64, "lon": 100})
        cube.to_zarr(store, zarr_format=3, encoding={"lst": {"compressors": None}})
        n_files = sum(1 for p in store.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        for r in range(rounds):
            with mlflow.start_run() as run:
                t0 = time.perf_counter()
                log_zarr_store(store, "toolkit/cube.zarr")
                timings["toolkit"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                mlflow.log_artifacts(str(store), "plain/cube.zarr")
                timings["mlflow"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fs.put(str(store) + "/", f"{backend.config.bucket(team)}/bench/r{r}/cube.zarr/", recursive=True)
            timings["s3fs"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_zarr(run.info.run_id, "toolkit/cube.zarr").load()
            timings["read_toolkit"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plain/cube.zarr",
                                                        dst_path=tempfile.mkdtemp(dir=tmp))  # fmt: skip
            xr.open_zarr(local, consolidated=False).load()
            timings["read_mlflow"].append(time.perf_counter() - t0)
        assert download_artifacts  # the exact download is what load_zarr falls back to without S3 keys
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "zarr_files": n_files, "zarr_mb": size / 1e6,
        "log_toolkit_s": med["toolkit"], "log_s3fs_s": med["s3fs"], "log_mlflow_s": med["mlflow"],
        "ratio_toolkit_vs_s3fs": med["s3fs"] / med["toolkit"], "ratio_mlflow_vs_s3fs": med["s3fs"] / med["mlflow"],
        "read_toolkit_s": med["read_toolkit"], "read_mlflow_s": med["read_mlflow"],
    }  # fmt: skip


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child started by a parent that
# held the cube in memory would report the parent's peak.
STREAM_CHILD = """
import sys, xarray as xr
sys.path.insert(0, sys.argv[2])
from bench_toolkit import torch_rate
ds = xr.open_zarr(sys.argv[1])
rate = torch_rate(ds)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(rate, int(hwm.split()[1]) / 1024)
"""


def bench_memory(tmp: Path) -> dict[str, float]:
    """Peak RSS of a fresh process streaming a cube ~4x the size of the default benchmark cube."""
    url = str(tmp / "big.zarr")
    big = make_cube((736, 270, 540), (46, 90, 90), seed=3)
    big.to_zarr(url, zarr_format=3, mode="w")
    size_mb = sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file()) / 2**20
    decoded_mb = big.nbytes / 2**20
    out = subprocess.run([sys.executable, "-c", STREAM_CHILD, url, str(Path(__file__).parent)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    rate, peak = map(float, out.stdout.split())
    return {"stream_cube_decoded_mb": decoded_mb, "stream_cube_on_disk_mb": size_mb, "stream_peak_rss_mb": peak,
            "stream_rate_per_s": rate}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count()}
    stacks = ScratchStacks()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print("local sampling ...", flush=True)
            local = str(Path(tmp) / "cube.zarr")
            make_cube().to_zarr(local, zarr_format=3, mode="w")
            results.update(bench_sampling(local, None, args.rounds, "local"))
            results.update(bench_ml4xcube(Path(tmp), args.rounds))
            backend = stacks.backend(stacks.config(teams=[{"name": "bench", "members": ["alice"]}]))
            backend.up()
            print("S3 sampling ...", flush=True)
            team = backend.config.teams[0]
            creds = backend.s3.team_credentials(team)
            options = {"key": creds.access_key, "secret": creds.secret_key,
                       "client_kwargs": {"endpoint_url": backend.s3.url}}  # fmt: skip
            s3_url = f"s3://{backend.config.bucket(team)}/bench/cube.zarr"
            make_cube().to_zarr(s3_url, zarr_format=3, mode="w", storage_options=options)
            results.update(bench_sampling(s3_url, options, args.rounds, "s3"))
            print("zarr logging ...", flush=True)
            results.update(bench_zarr_logging(backend, args.rounds))
            print("streaming memory ...", flush=True)
            results.update(bench_memory(Path(tmp)))
        finally:
            stacks.close()
    r = results
    rows = []
    for where in ("local", "s3"):
        raw = r[f"{where}_raw_zarr_per_s"]
        rows += [
            (f"{where}: plain zarr read+decompress, valid samples/s (ceiling)", f"{raw / 1e6:.1f} M/s", ""),
            (f"{where}: toolkit -> torch batches", f"{r[f'{where}_torch_per_s'] / 1e6:.1f} M/s "
             f"({r[f'{where}_torch_per_s'] / raw:.2f}x raw)", ">= 0.25x raw"),
            (f"{where}: toolkit -> tf.data", f"{r[f'{where}_tfdata_per_s'] / 1e6:.1f} M/s "
             f"({r[f'{where}_tfdata_per_s'] / raw:.2f}x raw)", ">= 0.25x raw"),
        ]  # fmt: skip
    if "v2_ml4xcube_xrdataset_per_s" in r:
        theirs = r["v2_ml4xcube_xrdataset_per_s"]
        in_order, shuffled = r["v2_toolkit_torch_unshuffled_per_s"], r["v2_toolkit_torch_per_s"]
        rows += [
            ("zarr v2 copy: ml4xcube 1.1.0 XrDataset (cube order)", f"{theirs / 1e6:.2f} M/s", ""),
            ("zarr v2 copy: toolkit -> torch batches, cube order (the same work)",
             f"{in_order / 1e6:.1f} M/s ({in_order / theirs:.0f}x)", ">= 100x ml4xcube"),
            ("zarr v2 copy: toolkit -> torch batches, shuffled",
             f"{shuffled / 1e6:.1f} M/s ({shuffled / theirs:.0f}x)", ""),
        ]  # fmt: skip
    rows += [
        (f"log {r['zarr_mb']:.0f} MB zarr / {r['zarr_files']} files: toolkit", f"{r['log_toolkit_s']:.2f} s", ""),
        ("  s3fs put straight to S3", f"{r['log_s3fs_s']:.2f} s", ""),
        ("  plain mlflow.log_artifacts", f"{r['log_mlflow_s']:.2f} s", ""),
        ("  speed vs s3fs: toolkit / plain mlflow",
         f"{r['ratio_toolkit_vs_s3fs']:.2f} / {r['ratio_mlflow_vs_s3fs']:.2f}", ">= 0.8 / (0.25)"),
        ("read back: toolkit load_zarr / mlflow download + open",
         f"{r['read_toolkit_s']:.2f} / {r['read_mlflow_s']:.2f} s", "toolkit <= mlflow"),
        (f"streaming a {r['stream_cube_decoded_mb']:.0f} MB cube into torch batches: peak RSS",
         f"{r['stream_peak_rss_mb']:.0f} MB", "bounded"),
    ]  # fmt: skip
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
