"""The installing phase of a first `make up`: uv from the lock files, in parallel, against the pip path `up` took
before (each environment from its environment file with pip, one after another). Prints a markdown table;
`--json FILE` saves the numbers.

    .venv/bin/python benchmarks/bench_install.py [--rounds 1]

Each install goes into a new, empty install directory with empty package caches of its own (pip's, uv's and
npm's), as on a fresh machine: every package comes from the package sources again. The two alternate within a
round (pip first in odd rounds), so the machine's noise falls on both alike. The pip path takes minutes: one
round is the default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import report

from cubelab import install

SCRATCH = Path(__file__).resolve().parents[1] / ".cubelab" / "scratch"


def timed(method: str, root: Path) -> float:
    target, caches = root / "install", root / "caches"
    os.environ.update({"PIP_CACHE_DIR": str(caches / "pip"), "npm_config_cache": str(caches / "npm"),
                       "CUBELAB_INSTALLER": method})  # fmt: skip

    def say(message: str) -> None:
        print(f"[{method} {time.monotonic() - t0:6.1f} s] {message}", flush=True)

    t0 = time.monotonic()
    if method == "uv":
        install.install_all(target, say)
    else:  # what `up` did before: one environment after another, with pip
        install.services_env(target, say)
        hub = install.hub_env(target, say)
        install.kernel_envs(target, hub, say)
        install.proxy_command(target, say)
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"pip": [], "uv": []}
    for round_ in range(args.rounds):
        for method in ("pip", "uv") if round_ % 2 == 0 else ("uv", "pip"):
            with tempfile.TemporaryDirectory(prefix="bench-install-", dir=SCRATCH) as root:
                times[method].append(timed(method, Path(root)))
    pip, uv = statistics.median(times["pip"]), statistics.median(times["uv"])
    kernels = [f"kernel-{p.parent.name}" for p in install.kernel_specs()]
    results = {"pip_s": times["pip"], "uv_s": times["uv"], "ratio": uv / pip, "rounds": args.rounds,
               "environments": ["services", "hub", *kernels]}  # fmt: skip
    rows = [
        ("pip, one environment after another (today's path before)", f"{pip:.0f} s", "-"),
        ("uv from the lock files, in parallel", f"{uv:.0f} s", "-"),
        ("uv / pip", f"{uv / pip:.2f}×", "≤ 0.35×"),
    ]
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
