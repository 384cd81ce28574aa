"""Benchmarks of the embedded platform (issue 2's targets). Prints a markdown table; `--json FILE` saves numbers.

    .venv/bin/python benchmarks/bench_platform.py [--rounds 5] [--json results.json]

Measures, on throwaway stacks on free ports (installs shared with `make up`):
- cold `up` of 2 teams until all healthy: first start (new state) and restart (existing state, after down);
- idle memory (PSS over the process tree) of one team's tracking server, and of stock
  `mlflow server --workers 1` (job runner off) against the same database, in the same run;
- metric points per second with log_batch from 4 concurrent client processes to one team server;
- a ~100 MB zarr store of ~1,000 chunks: mlflow.log_artifacts through the proxy vs s3fs straight to S3.
These machines are shared and noisy: medians of several rounds; compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
from report import report
from scratch import ScratchStacks

from cubelab.procs import free_tcp_port, http_ok, tree_memory_mb, wait_until

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def bench_up(rounds: int) -> dict[str, Any]:
    first, restart = [], []
    for _ in range(rounds):
        stacks = ScratchStacks()
        try:
            backend = stacks.backend(stacks.config())
            t0 = time.perf_counter()
            backend.up()
            first.append(time.perf_counter() - t0)
            backend.down()
            t0 = time.perf_counter()
            backend.up()
            restart.append(time.perf_counter() - t0)
        finally:
            stacks.close()
    return {"up_first_s": statistics.median(first), "up_restart_s": statistics.median(restart), "rounds": rounds}


def _idle_pss(proc: psutil.Process, url: str) -> float:
    for _ in range(20):  # a little traffic first, as a server that has served requests
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=10", timeout=5).read()  # noqa: S310
    time.sleep(3)
    return tree_memory_mb(proc, "pss")


def bench_memory(backend: Any) -> dict[str, Any]:
    team = backend.config.teams[0]
    ours = backend.procs.running(team.service)
    ours_pss = _idle_pss(ours, backend.tracking.url(team))

    venv = backend.paths.install / "services"
    port = free_tcp_port()
    launch = backend.tracking.launch(team, venv)
    env = launch.env  # same database, bucket and credentials
    store_uri = env.pop("CUBELAB_BACKEND_STORE_URI")
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    stock_argv = [
        str(venv / "bin/mlflow"), "server", "--backend-store-uri", store_uri, "--serve-artifacts",
        "--artifacts-destination", env["CUBELAB_ARTIFACTS_DESTINATION"],
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(backend.paths.logs / "stock-mlflow.log", "wb")
    stock = subprocess.Popen(stock_argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 90, what="stock mlflow server")
        stock_pss = _idle_pss(psutil.Process(stock.pid), f"http://127.0.0.1:{port}")
        stock_procs = 1 + len(psutil.Process(stock.pid).children(recursive=True))
    finally:
        os.killpg(stock.pid, 15)
        stock.wait(timeout=30)
        log.close()
    return {
        "tracking_pss_mb": ours_pss,
        "tracking_processes": 1 + len(ours.children(recursive=True)),
        "stock_pss_mb": stock_pss,
        "stock_processes": stock_procs,
    }


def _log_batch_worker(args: tuple[str, str, int, int]) -> int:
    uri, run_id, calls, per_call = args
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    for c in range(calls):
        metrics = [Metric(f"m{i % 10}", float(i), now, c * per_call + i) for i in range(per_call)]
        client.log_batch(run_id, metrics=metrics)
    return calls * per_call


def bench_log_batch(backend: Any, rounds: int, clients: int = 4) -> dict[str, Any]:
    import mlflow

    uri = backend.tracking.url(backend.config.teams[0])
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(f"bench-log-batch-{time.time_ns()}")
    rates = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(clients) as pool:
        pool.map(_log_batch_worker, [(uri, client.create_run(exp).info.run_id, 1, 10) for _ in range(clients)])
        for _ in range(rounds):
            runs = [client.create_run(exp).info.run_id for _ in range(clients)]
            t0 = time.perf_counter()
            points = sum(pool.map(_log_batch_worker, [(uri, r, 20, 1000) for r in runs]))
            rates.append(points / (time.perf_counter() - t0))
    return {"log_batch_points_per_s": statistics.median(rates), "clients": clients, "batch": 1000}


def _zarr_store(folder: Path) -> tuple[Path, int, int]:
    import xarray as xr

    rng = np.random.default_rng(0)
    # float32, 1,024 chunks of ~100 KiB: ~100 MB in all, incompressible like real measurements with noise.
    data = rng.random((64, 256, 1600), dtype=np.float32)
    ds = xr.Dataset({"lst": (("time", "lat", "lon"), data)}).chunk({"time": 4, "lat": 64, "lon": 100})
    store = folder / "cube.zarr"
    ds.to_zarr(store, zarr_format=3, encoding={"lst": {"compressors": None}})
    files = [p for p in store.rglob("*") if p.is_file()]
    return store, len(files), sum(p.stat().st_size for p in files)


def bench_zarr_upload(backend: Any, rounds: int) -> dict[str, Any]:
    import mlflow
    import s3fs

    team = backend.config.teams[0]
    creds = backend.s3.team_credentials(team)
    fs = s3fs.S3FileSystem(
        key=creds.access_key, secret=creds.secret_key, client_kwargs={"endpoint_url": backend.s3.url}
    )
    mlflow.set_tracking_uri(backend.tracking.url(team))
    mlflow.set_experiment("bench-zarr")
    via_mlflow, via_s3 = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store, n_files, n_bytes = _zarr_store(Path(tmp))
        for r in range(rounds):
            with mlflow.start_run():
                t0 = time.perf_counter()
                mlflow.log_artifacts(str(store), "cube.zarr")
                via_mlflow.append(time.perf_counter() - t0)
            target = f"{backend.config.bucket(team)}/bench/round{r}/cube.zarr"
            t0 = time.perf_counter()
            fs.put(str(store), target, recursive=True)
            via_s3.append(time.perf_counter() - t0)
    m, s = statistics.median(via_mlflow), statistics.median(via_s3)
    return {
        "zarr_files": n_files,
        "zarr_mb": n_bytes / 1e6,
        "mlflow_log_artifacts_s": m,
        "s3fs_put_s": s,
        "ratio_mlflow_speed_vs_s3fs": s / m,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()

    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"cold up x{args.rounds} ...", flush=True)
    results.update(bench_up(args.rounds))
    stacks = ScratchStacks()
    try:
        backend = stacks.backend(stacks.config())
        backend.up()
        print("memory ...", flush=True)
        results.update(bench_memory(backend))
        print("log_batch ...", flush=True)
        results.update(bench_log_batch(backend, args.rounds))
        print("zarr upload ...", flush=True)
        results.update(bench_zarr_upload(backend, max(3, args.rounds // 2)))
    finally:
        stacks.close()
        shutil.rmtree(Path(tempfile.gettempdir()) / "cubelab-bench", ignore_errors=True)

    rows = [
        ("cold `up`, 2 teams, new state (median)", f"{results['up_first_s']:.1f} s", "<= 15 s"),
        ("cold `up`, 2 teams, after `down` (median)", f"{results['up_restart_s']:.1f} s", "<= 15 s"),
        (
            "idle PSS, one team's tracking server",
            f"{results['tracking_pss_mb']:.0f} MB ({results['tracking_processes']} process)",
            "<= 250 MB",
        ),
        (
            "idle PSS, stock `mlflow server --workers 1`",
            f"{results['stock_pss_mb']:.0f} MB ({results['stock_processes']} processes)",
            "reference",
        ),
        ("log_batch, 4 clients, 1,000 points a call", f"{results['log_batch_points_per_s']:,.0f} points/s", "-"),
        (
            f"zarr {results['zarr_mb']:.0f} MB / {results['zarr_files']} files: mlflow.log_artifacts",
            f"{results['mlflow_log_artifacts_s']:.2f} s",
            "-",
        ),
        ("same store: s3fs put straight to S3", f"{results['s3fs_put_s']:.2f} s", "-"),
        ("speed ratio mlflow / s3fs", f"{results['ratio_mlflow_speed_vs_s3fs']:.2f}", "~0.25 measured before"),
    ]
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
