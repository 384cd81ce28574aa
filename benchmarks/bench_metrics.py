"""What the tracking servers' metrics cost. Prints a markdown table; `--json FILE` saves the numbers.

    .venv/bin/python benchmarks/bench_metrics.py [--calls 20000] [--objects 5000] [--rounds 5]

- Per request: the metrics middleware (cubelab.tracking.metrics) around an ASGI app that answers at once, against
  the same app bare, in one process, alternating within each round; and, for scale, the median latency of a
  `log_metric` through a real team server on a throwaway stack.
- Per scrape, on that stack: a scrape that finds the team's sizes fresh, and one that measures them (the
  database's size and a listing of a bucket of OBJECTS objects with the team's keys).
These machines are shared and noisy: medians, and ratios of medians measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
import boto3
import mlflow
import requests
from report import report
from scratch import ScratchStacks

from cubelab.tracking.auth import ROUTE_KEY
from cubelab.tracking.metrics import MetricsMiddleware

TOKEN = "b" * 64


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if ROUTE_KEY in scope:
        scope[ROUTE_KEY]["handler"] = "_log_metric"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def per_call_us(app: Any, calls: int) -> float:
    scope = {"type": "http", "path": "/api/2.0/mlflow/runs/log-metric", "method": "POST", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        return None

    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - t0) / calls * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    counted = MetricsMiddleware(bare, "ocean", TOKEN)
    with_mw, without = [], []
    for _ in range(args.rounds):
        without.append(per_call_us(bare, args.calls))
        with_mw.append(per_call_us(counted, args.calls))
    overhead = statistics.median(with_mw) - statistics.median(without)

    stacks = ScratchStacks(progress=lambda m: print(f"[stack] {m}", flush=True))
    try:
        backend = stacks.backend(stacks.config(teams=[{"name": "ocean", "members": ["alice"]}], users=["alice"],
                                               monitoring={"sizes_every_seconds": 5}))  # fmt: skip
        backend.up()
        team = backend.config.team("ocean")
        token = backend.tracking.metrics_token()
        url = f"{backend.tracking.addresses().tracking['ocean']}/metrics"
        creds = backend.s3.team_credentials(team)
        s3 = boto3.client("s3", endpoint_url=backend.s3.url, aws_access_key_id=creds.access_key,
                          aws_secret_access_key=creds.secret_key, region_name="us-east-1")  # fmt: skip
        bucket = backend.config.bucket(team)
        print(f"putting {args.objects} objects into {bucket}", flush=True)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"cube/{i:06d}", Body=b"x" * 1024),
                          range(args.objects)))  # fmt: skip

        mlflow.set_tracking_uri(backend.tracking.url(team))
        import os

        os.environ["MLFLOW_TRACKING_TOKEN"] = backend.hub.issue_token("alice")
        client = mlflow.MlflowClient()
        run = client.create_run(client.create_experiment("bench-metrics"))
        latencies = []
        for step in range(300):
            t0 = time.perf_counter()
            client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
            latencies.append((time.perf_counter() - t0) * 1000)

        def scrape() -> float:
            t0 = time.perf_counter()
            resp = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            resp.raise_for_status()
            assert f'cubelab_team_bucket_objects{{team="ocean"}} {float(args.objects)}' in resp.text, resp.text[-800:]
            return (time.perf_counter() - t0) * 1000

        scrape()  # the first measurement
        fresh, measuring = [], []
        for _ in range(args.rounds):
            fresh.append(scrape())
            time.sleep(5.2)  # past sizes_every_seconds: the next scrape measures again
            measuring.append(scrape())
    finally:
        stacks.close()

    results = {
        "middleware_us_per_request": statistics.median(with_mw), "bare_us_per_request": statistics.median(without),
        "overhead_us": overhead, "log_metric_ms_median": statistics.median(latencies),
        "scrape_fresh_ms": statistics.median(fresh), "scrape_measuring_ms": statistics.median(measuring),
        "objects": args.objects, "calls": args.calls, "rounds": args.rounds,
    }  # fmt: skip
    share = overhead / 1000 / statistics.median(latencies) * 100
    rows = [
        ("metrics middleware per request (no-op app, in process)", f"{overhead:.1f} µs", "-"),
        ("`log_metric` through a team server (median of 300)", f"{statistics.median(latencies):.1f} ms", "-"),
        ("middleware share of a `log_metric`", f"{share:.2f} %", "small"),
        ("scrape, sizes fresh (median)", f"{statistics.median(fresh):.1f} ms", "-"),
        (f"scrape that measures sizes ({args.objects} objects)", f"{statistics.median(measuring):.1f} ms", "-"),
    ]
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
