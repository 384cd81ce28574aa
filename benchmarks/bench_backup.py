"""Backup and restore against the raw work they do (issue 13's targets). Prints a markdown table; `--json FILE`
saves the numbers.

    .venv/bin/python benchmarks/bench_backup.py [--objects 10000] [--size-kb 100] [--metrics 100000] [--rounds 3]

On a throwaway stack (installs shared with `make up`), one team gets OBJECTS artefacts of SIZE_KB each (1 GB by
default) and a run with METRICS metric points. Then, alternating within each round so that the machine's noise
falls on both alike:
- `cubelab backup` into a new folder, against the raw work: `pg_dump -Fc` of the team's database plus a plain
  boto3 download of the same objects into files, with the same number of parallel transfers (8);
- a second backup into the same folder with nothing changed, against the first;
- `cubelab restore --team --force` of that team (stops its server, replaces database and bucket, starts it),
  against the raw work: `pg_restore` of the dump into a new database plus a boto3 upload of the files.
These machines are shared and noisy: medians, and ratios of medians measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "tests"))  # scratch: throwaway stacks
import mlflow
from mlflow.entities import Metric
from report import report
from scratch import ScratchStacks

from cubelab.backup.engine import WORKERS, Database

TEAM = "ocean"


def fill(backend: Any, objects: int, size: int, metrics: int) -> None:
    team = backend.config.team(TEAM)
    os.environ["MLFLOW_TRACKING_TOKEN"] = backend.hub.issue_token("alice")
    client = mlflow.MlflowClient(backend.tracking.url(team))
    run = client.create_run("0").info.run_id
    now = int(time.time() * 1000)
    for start in range(0, metrics, 1000):
        batch = [Metric("loss", 1.0 / (i + 1), now, i) for i in range(start, min(start + 1000, metrics))]
        client.log_batch(run, metrics=batch)
    s3 = backend.s3.client(backend.s3.team_credentials(team))
    bucket = backend.config.bucket(team)
    payload = os.urandom(size)

    def put(i: int) -> None:  # distinct bytes per object: nothing deduplicates
        s3.put_object(Bucket=bucket, Key=f"bench/{run}/artifacts/part-{i:05d}.bin", Body=i.to_bytes(4) + payload[4:])

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(put, range(objects)))


def raw_backup(backend: Any, folder: Path) -> float:
    from cubelab.backends.local.postgres import server_bindir

    team = backend.config.team(TEAM)
    db = Database(TEAM, team.database, team.role, str(backend.postgres.socket_dir), backend.postgres.port, "cubelab",
                  backend.postgres.password(), server_bindir())  # fmt: skip
    s3 = backend.s3.client(backend.s3.team_credentials(team))
    bucket = backend.config.bucket(team)
    t0 = time.monotonic()
    subprocess.run([db.tool("pg_dump"), *db.options(), "-d", db.database, "-Fc", "-f", str(folder / "db.dump")],
                   env=db.env(), check=True)  # fmt: skip
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]  # fmt: skip

    def get(i_key: tuple[int, str]) -> None:
        (folder / f"{i_key[0]}").write_bytes(s3.get_object(Bucket=bucket, Key=i_key[1])["Body"].read())

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(get, enumerate(keys)))
    return time.monotonic() - t0


def raw_restore(backend: Any, folder: Path, bucket: str, keys: list[str]) -> float:
    """pg_restore of the raw dump into a new database, and the raw files uploaded into a scratch bucket."""
    from cubelab.backends.local.postgres import server_bindir

    db = Database(TEAM, "bench_restore", "cubelab", str(backend.postgres.socket_dir), backend.postgres.port, "cubelab",
                  backend.postgres.password(), server_bindir())  # fmt: skip
    s3 = backend.s3.client(backend.s3.admin_credentials())
    conn = backend.postgres.connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS bench_restore WITH (FORCE)")
        cur.execute("CREATE DATABASE bench_restore")
    conn.close()
    t0 = time.monotonic()
    subprocess.run([db.tool("pg_restore"), *db.options(), "-d", db.database, "--no-owner", "--no-acl",
                    "--single-transaction", str(folder / "db.dump")], env=db.env(), check=True)  # fmt: skip

    def put(i_key: tuple[int, str]) -> None:
        s3.put_object(Bucket=bucket, Key=i_key[1], Body=(folder / f"{i_key[0]}").read_bytes())

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(put, enumerate(keys)))
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--size-kb", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its stack
    stacks = ScratchStacks(progress=lambda _: None)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=os.environ.get("TMPDIR")))
    times: dict[str, list[float]] = {k: [] for k in ("backup", "raw_backup", "incremental", "restore", "raw_restore")}
    try:
        backend = stacks.backend(stacks.config(teams=[{"name": TEAM, "members": ["alice"]}]))
        backend.up()
        t0 = time.monotonic()
        fill(backend, args.objects, args.size_kb * 1024, args.metrics)
        print(f"filled: {args.objects} objects of {args.size_kb} KB, {args.metrics} metric points "
              f"in {time.monotonic() - t0:.0f} s", flush=True)  # fmt: skip
        scratch_bucket = "bench-raw-restore"
        backend.s3.client(backend.s3.admin_credentials()).create_bucket(Bucket=scratch_bucket)
        for round_ in range(args.rounds):
            raw = work / f"raw-{round_}"
            raw.mkdir()
            times["raw_backup"].append(raw_backup(backend, raw))
            repo = work / f"repo-{round_}"
            t0 = time.monotonic()
            backend.backup(str(repo))
            times["backup"].append(time.monotonic() - t0)
            t0 = time.monotonic()
            backend.backup(str(repo))
            times["incremental"].append(time.monotonic() - t0)
            s3 = backend.s3.client(backend.s3.team_credentials(backend.config.team(TEAM)))
            bucket = backend.config.bucket(backend.config.team(TEAM))
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                    for o in page.get("Contents", [])]  # fmt: skip
            times["raw_restore"].append(raw_restore(backend, raw, scratch_bucket, keys))
            t0 = time.monotonic()
            backend.restore(str(repo), [TEAM], force=True)
            times["restore"].append(time.monotonic() - t0)
            shutil.rmtree(raw)
            if round_:
                shutil.rmtree(repo)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    finally:
        stacks.close()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gb = args.objects * args.size_kb / 2**20
    results = {f"{k}_s": {"median": med[k], "all": v} for k, v in times.items()} | {
        "backup_over_raw": med["backup"] / med["raw_backup"],
        "incremental_over_backup": med["incremental"] / med["backup"],
        "restore_over_raw": med["restore"] / med["raw_restore"],
        "objects": args.objects, "size_kb": args.size_kb, "metrics": args.metrics, "rounds": args.rounds,
    }  # fmt: skip
    label = f"{args.objects} objects ({gb:.2f} GB), {args.metrics} metric points, median of {args.rounds}"
    rows = [
        (f"backup ({label})", f"{med['backup']:.1f} s vs raw {med['raw_backup']:.1f} s: "
         f"{results['backup_over_raw']:.2f}×", "≤ 1.3×"),
        ("second backup, nothing changed", f"{med['incremental']:.1f} s: {results['incremental_over_backup']:.3f}× "
         "of the first", "≤ 0.1×"),
        ("restore of the team", f"{med['restore']:.1f} s vs raw {med['raw_restore']:.1f} s: "
         f"{results['restore_over_raw']:.2f}×", "≤ 1.3×"),
    ]  # fmt: skip
    report(rows, results, args.json)


if __name__ == "__main__":
    main()
