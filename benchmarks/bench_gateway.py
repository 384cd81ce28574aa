"""Benchmarks of Dask clusters through the gateway (issue 14's targets). Prints a markdown table.

    .venv/bin/python benchmarks/bench_gateway.py [--rounds 5] [--resolution 1.0] [--json FILE]

On a throwaway stack with the gateway (installs shared with `make up`), everything measured in a member's
scikit-learn kernel, as a user would run it:
- `Gateway().new_cluster()`, `scale(1)` and the first result of a task: median of --rounds, each on a new
  cluster (shut down afterwards);
- the toolkit's preprocessing (cubelab_toolkit.preprocess.preprocess_cube) of a synthetic cube in the team's
  bucket (--chunking: ESDC's series chunks by default): a block split, the scaler's statistics over the training
  split, the cube standardised with them and written back to the bucket as zarr; by the kernel's own dask
  threads and by a two-worker gateway cluster, taking turns --rounds times in the same run: the ratio of the
  two medians, in tasks of --task-mb (whole stored chunks grouped); then once each with one task per stored
  chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
from report import report
from scratch import ScratchStacks

from platform_tests.hubclient import UserServer

FIRST_RESULT = """
import json, statistics, time
from dask_gateway import Gateway
times = []
for _ in range(ROUNDS):
    t0 = time.perf_counter()
    cluster = Gateway().new_cluster()
    cluster.scale(1)
    client = cluster.get_client()
    assert client.submit(lambda x: x + 1, 1).result() == 2
    times.append(time.perf_counter() - t0)
    client.close()
    cluster.shutdown()
print(json.dumps({"first_result_s": statistics.median(times), "first_result_all_s": times}))
"""

PREPROCESS = """
import json, os, statistics, time
import dask
from dask_gateway import Gateway
from cubelab_toolkit.artifacts import s3_options
from cubelab_toolkit.cube import open_cube, synthetic_cube, write_cube
from cubelab_toolkit.preprocess import preprocess_cube

base = f"s3://{os.environ['S3_USER_STORAGE_BUCKET']}/bench-gateway"
opts = s3_options()
write_cube(synthetic_cube(years=2, resolution=RESOLUTION), f"{base}/cube.zarr", chunking="CHUNKING",
           storage_options=opts)
cube = open_cube(f"{base}/cube.zarr", storage_options=opts)
variables = [v for v in cube.data_vars if cube[v].dims == ("time", "lat", "lon") and cube[v].dtype.kind == "f"]

def preprocess(out, client, task_mb):
    t0 = time.perf_counter()
    preprocess_cube(f"{base}/cube.zarr", f"{base}/{out}.zarr", variables, split={"method": "block", "seed": 1},
                    standardise=True, client=client, storage_options=opts, task_mb=task_mb)
    return time.perf_counter() - t0

def threads(out, task_mb):
    with dask.config.set(scheduler="threads"):
        return preprocess(out, None, task_mb)

result = {"cube_mb": cube.nbytes / 1e6}
cluster = Gateway().new_cluster()
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=240)
# The first work of a new cluster also pays its workers' imports and first connections (in the first-result time
# above): measured apart. Then the kernel's threads and the warm cluster take turns, ROUNDS times each.
result["gateway_cold_s"] = preprocess("gateway-cold", client, TASK_MB)
result["local_all_s"], result["gateway_all_s"] = [], []
for _ in range(ROUNDS):
    result["local_all_s"].append(threads("local", TASK_MB))
    result["gateway_all_s"].append(preprocess("gateway", client, TASK_MB))
result["local_s"] = statistics.median(result["local_all_s"])
result["gateway_s"] = statistics.median(result["gateway_all_s"])
result["local_stored_s"] = threads("local-stored", 0.001)
result["gateway_stored_s"] = preprocess("gateway-stored", client, 0.001)
client.close()
cluster.shutdown()
print(json.dumps(result))
"""


def in_kernel(server: UserServer, code: str, timeout: float) -> dict[str, Any]:
    out = server.run(code, timeout=timeout, kernel_name="cubelab-sklearn")
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resolution", type=float, default=1.0, help="the cube's grid spacing in degrees")
    parser.add_argument(
        "--chunking",
        choices=["map", "timeseries"],
        default="timeseries",
        help="the cube's chunks: whole maps per time step, or 64x64-cell series",
    )
    parser.add_argument("--task-mb", type=float, default=64.0, help="preprocess_cube's task size (task_chunks)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    stacks = ScratchStacks()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count()}
    try:
        config = stacks.config(teams=[{"name": "bench", "members": ["alice"]}], users=["alice"],
                               dask_gateway={"enabled": True, "clusters": {"max_workers_per_cluster": 2}})  # fmt: skip
        backend = stacks.backend(config)
        backend.up()
        server = UserServer(backend.hub.url, "alice", backend.hub.issue_token("alice"))
        server.start(team="bench")
        print("new cluster -> first result ...", flush=True)
        results.update(in_kernel(server, FIRST_RESULT.replace("ROUNDS", str(args.rounds)), 120 * args.rounds))
        print("preprocessing: kernel threads, then a 2-worker cluster ...", flush=True)
        code = PREPROCESS.replace("RESOLUTION", str(args.resolution)).replace("CHUNKING", args.chunking)
        code = code.replace("ROUNDS", str(args.rounds))
        code = code.replace("TASK_MB", str(args.task_mb))
        results.update(in_kernel(server, code, 1800))
        server.stop()
    finally:
        stacks.close()
    r = results
    r["ratio"] = r["local_s"] / r["gateway_s"]
    r["ratio_stored"] = r["local_stored_s"] / r["gateway_stored_s"]
    r["chunking"] = args.chunking
    r["task_mb"] = args.task_mb
    rows = [
        ("new_cluster() -> scale(1) -> first result (median)", f"{r['first_result_s']:.1f} s", "<= 10 s"),
        (
            f"preprocess_cube, a {r['cube_mb']:.0f} MB cube ({r['chunking']} chunks), {r['task_mb']:g} MB tasks: "
            "kernel threads (median)",
            f"{r['local_s']:.1f} s",
            "",
        ),
        ("  the same on a 2-worker gateway cluster (warm; median)", f"{r['gateway_s']:.1f} s", ""),
        ("  its first run on the new cluster (cold workers)", f"{r['gateway_cold_s']:.1f} s", ""),
        ("  ratio (threads time / cluster time, medians)", f"{r['ratio']:.2f}x", ">= 0.8x on 2 cores"),
        ("  one task per stored chunk: kernel threads", f"{r['local_stored_s']:.1f} s", ""),
        ("  one task per stored chunk: 2-worker cluster", f"{r['gateway_stored_s']:.1f} s", ""),
        ("  ratio, one task per stored chunk", f"{r['ratio_stored']:.2f}x", ""),
    ]
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
