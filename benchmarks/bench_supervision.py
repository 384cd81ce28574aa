"""How fast the embedded stack's supervisor brings a killed service back (issue 13's target: a tracking server
serving again within 5 s of a SIGKILL, median). Prints a markdown table; `--json FILE` saves numbers.

    .venv/bin/python benchmarks/bench_supervision.py [--rounds 5] [--json results-supervision.json]

On a throwaway stack (installs shared with `make up`): SIGKILL to a service's recorded process, then the time
until it answers again (a tracking server's /health, the hub's API through its proxy, a Postgres query, an S3
request), with no command run. Rounds are spaced past the supervisor's restart pauses (supervision settings
below). These machines are shared and noisy: medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
from report import report
from scratch import ScratchStacks

# No pause between tries and no limit in reach: each round measures a first restart.
POLICY = {"max_restarts": 1000, "window_seconds": 10, "max_pause_seconds": 0}


def recovery(backend: Any, name: str, healthy: Callable[[], bool]) -> float:
    record = backend.procs.running(name)
    assert record is not None, f"{name} is not running"
    t0 = time.monotonic()
    os.kill(record.pid, signal.SIGKILL)
    while True:
        current = backend.procs.get(name)
        if current and current.pid != record.pid and current.process() and healthy():
            return time.monotonic() - t0
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"{name} did not come back within 120 s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    stacks = ScratchStacks(progress=lambda _: None)
    try:
        backend = stacks.backend(stacks.config(teams=[{"name": "ocean", "members": ["alice"]}], supervision=POLICY))
        backend.up()
        team = backend.config.team("ocean")
        services = {
            "tracking": (team.service, partial(backend.tracking.healthy, team)),
            "hub": ("hub", backend.hub.healthy),
            "postgres": ("postgres", backend.postgres.healthy),
            "s3": ("s3", backend.s3.healthy),
        }
        times: dict[str, list[float]] = {role: [] for role in services}
        for _ in range(args.rounds):
            for role, (name, healthy) in services.items():
                times[role].append(recovery(backend, name, healthy))
                time.sleep(1)
    finally:
        stacks.close()
    results = {f"{role}_recovery_s": {"median": statistics.median(t), "all": t} for role, t in times.items()}
    rows = [(f"SIGKILL to serving again: {role} (median of {args.rounds})", f"{statistics.median(t):.1f} s",
             "≤ 5 s" if role == "tracking" else "-") for role, t in times.items()]  # fmt: skip
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
