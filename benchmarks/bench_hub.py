"""Benchmarks of the hub and team authentication (issue 3's targets). Prints a markdown table.

    .venv/bin/python benchmarks/bench_hub.py [--rounds 5] [--users 20] [--duration 60] [--json FILE]

On a throwaway stack (installs shared with `make up`), with one team of --users members:
- login (the real form) -> the user's server ready -> first cell executed, median of rounds;
- a tracking call (experiments/search) through the hub with authentication, straight to the server with
  authentication (cached token check), and straight to a second server of the same team with authentication
  off, same run: medians and the added latency;
- --users concurrent users logging metrics (runs/log-metric, each with their own token) for --duration
  seconds: errors, throughput, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
from report import report
from scratch import ScratchStacks

from cubelab.procs import free_tcp_port, http_ok, wait_until
from platform_tests.hubclient import UserServer, login


def bench_first_cell(backend: Any, user: str, rounds: int) -> dict[str, Any]:
    password = (backend.paths.secrets / "users" / user).read_text().strip()
    totals, logins, spawns, cells = [], [], [], []
    for _ in range(rounds):
        server = UserServer(backend.hub.url, user, backend.hub.issue_token(user))
        t0 = time.perf_counter()
        _, resp = login(backend.hub.url, user, password)
        assert resp.status_code == 302, resp.status_code
        t1 = time.perf_counter()
        server.start(team=backend.config.teams[0].name)
        t2 = time.perf_counter()
        assert server.run("print(1 + 1)").strip() == "2"
        t3 = time.perf_counter()
        server.stop()
        logins.append(t1 - t0)
        spawns.append(t2 - t1)
        cells.append(t3 - t2)
        totals.append(t3 - t0)
        time.sleep(1)
    return {
        "first_cell_total_s": statistics.median(totals),
        "first_cell_login_s": statistics.median(logins),
        "first_cell_spawn_s": statistics.median(spawns),
        "first_cell_kernel_s": statistics.median(cells),
    }


def _median_ms(url: str, headers: dict[str, str], n: int = 300) -> float:
    session = requests.Session()
    for _ in range(20):
        session.get(url, headers=headers, timeout=10).raise_for_status()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.get(url, headers=headers, timeout=10).raise_for_status()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_auth_latency(backend: Any, token: str) -> dict[str, Any]:
    team = backend.config.teams[0]
    venv = backend.paths.install / "services"
    launch = backend.tracking.launch(team, venv)
    argv, env = launch.argv, launch.env
    for key in [k for k in env if k.startswith(("CUBELAB_HUB", "CUBELAB_SERVICE")) and k != "CUBELAB_SERVICE_PREFIX"]:
        del env[key]  # the same server, under the same path, with authentication off
    port = free_tcp_port()
    env["CUBELAB_PORT"] = str(port)
    log = open(backend.paths.logs / "bench-noauth.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prefix = f"/services/{team.service}"
    query = "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        health = f"http://127.0.0.1:{port}{prefix}/health"
        wait_until(lambda: http_ok(health), 90, what="the tracking server without authentication")
        auth = {"Authorization": f"Bearer {token}"}
        hub_ms = _median_ms(f"{backend.hub.url}{prefix}{query}", auth)
        direct_ms = _median_ms(f"{backend.tracking.url(team)}{query}", auth)
        off_ms = _median_ms(f"http://127.0.0.1:{port}{prefix}{query}", {})
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
    return {
        "call_through_hub_ms": hub_ms,
        "call_direct_auth_ms": direct_ms,
        "call_direct_noauth_ms": off_ms,
        "auth_added_ms": hub_ms - off_ms,
        "auth_check_only_ms": direct_ms - off_ms,
    }


def bench_concurrent(backend: Any, users: list[str], duration: float) -> dict[str, Any]:
    team = backend.config.teams[0]
    uri = backend.tracking.url(team)
    admin = requests.Session()
    tokens = {u: backend.hub.issue_token(u) for u in users}
    exp = admin.post(
        f"{uri}/api/2.0/mlflow/experiments/create", json={"name": f"bench-{time.time_ns()}"},
        headers={"Authorization": f"Bearer {tokens[users[0]]}"}, timeout=10,
    ).json()["experiment_id"]  # fmt: skip
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def worker(user: str) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {tokens[user]}"}
        run = session.post(f"{uri}/api/2.0/mlflow/runs/create", json={"experiment_id": exp}, headers=headers,
                           timeout=30).json()["run"]["info"]["run_id"]  # fmt: skip
        step, mine = 0, []
        while time.monotonic() < stop_at:
            body = {"run_id": run, "key": "loss", "value": 1.0 / (step + 1), "timestamp": int(time.time() * 1000),
                    "step": step}  # fmt: skip
            t0 = time.perf_counter()
            try:
                resp = session.post(f"{uri}/api/2.0/mlflow/runs/log-metric", json=body, headers=headers, timeout=30)
                ok = resp.status_code == 200
            except requests.RequestException as exc:
                ok, resp = False, exc
            mine.append(time.perf_counter() - t0)
            if not ok:
                with lock:
                    errors.append(str(getattr(resp, "status_code", resp)))
            step += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    latencies.sort()
    return {
        "concurrent_users": len(users),
        "concurrent_seconds": round(elapsed, 1),
        "concurrent_requests": len(latencies),
        "concurrent_errors": len(errors),
        "concurrent_per_s": len(latencies) / elapsed,
        "concurrent_p50_ms": latencies[len(latencies) // 2] * 1000,
        "concurrent_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    users = [f"user{i:02d}" for i in range(args.users)]
    stacks = ScratchStacks()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count()}
    try:
        config = stacks.config(teams=[{"name": "bench", "members": users}], users=users)
        backend = stacks.backend(config)
        backend.up()
        print("first cell ...", flush=True)
        results.update(bench_first_cell(backend, users[0], args.rounds))
        print("auth latency ...", flush=True)
        results.update(bench_auth_latency(backend, backend.hub.issue_token(users[0])))
        print(f"{args.users} concurrent users for {args.duration:.0f} s ...", flush=True)
        results.update(bench_concurrent(backend, users, args.duration))
    finally:
        stacks.close()
    r = results
    rows = [
        ("login -> server ready -> first cell (median)", f"{r['first_cell_total_s']:.2f} s", "<= 5 s"),
        ("  of which login form / spawn / kernel + cell",
         f"{r['first_cell_login_s']:.2f} / {r['first_cell_spawn_s']:.2f} / {r['first_cell_kernel_s']:.2f} s", ""),
        ("tracking call through the hub, auth on (median)", f"{r['call_through_hub_ms']:.1f} ms", ""),
        ("same call straight to the server, auth on (median)", f"{r['call_direct_auth_ms']:.1f} ms", ""),
        ("same call straight to a server with auth off (median)", f"{r['call_direct_noauth_ms']:.1f} ms", ""),
        ("added latency: through hub with auth - direct without", f"{r['auth_added_ms']:.1f} ms", "<= 10 ms"),
        (f"{r['concurrent_users']} users logging metrics, {r['concurrent_seconds']:.0f} s: errors",
         str(r["concurrent_errors"]), "0"),
        ("  throughput", f"{r['concurrent_per_s']:.0f} requests/s", ""),
        ("  latency p50 / p99", f"{r['concurrent_p50_ms']:.0f} / {r['concurrent_p99_ms']:.0f} ms", ""),
    ]  # fmt: skip
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
