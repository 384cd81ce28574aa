"""The parts of a backup that do not depend on the deployment: database dumps, bucket copies, progress.

The embedded stack (cubelab.backends.local.maintenance) and the jobs of compose and Helm (cubelab.backup.job)
say where the databases and buckets are; these functions copy them into a repository and back.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cubelab.backup.repository import BackupError, Repository, blob_name

Progress = Callable[[str], None]
CHUNK = 1 << 20
WORKERS = 8  # parallel object transfers: S3 requests wait on the network far more than on the CPU
SMALL = 64 << 20  # objects up to this size are restored from memory in one request


@dataclass(frozen=True)
class Database:
    """A database to dump or restore, reached as a superuser (the password goes in the environment only)."""

    label: str  # "hub" or the team's name: names the dump file
    database: str
    role: str  # its owner, which owns everything a restore creates
    host: str
    port: int
    user: str
    password: str
    bindir: Path | None = None  # where pg_dump and pg_restore are (None: on PATH)

    def tool(self, name: str) -> str:
        return str(self.bindir / name) if self.bindir else name

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}

    def options(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]


class Meter:
    """Progress of a transfer: objects and bytes, printed at most every few seconds and at the end."""

    def __init__(self, progress: Progress, label: str, objects: int, size: int, every: float = 3.0) -> None:
        self.progress, self.label, self.objects, self.size, self.every = progress, label, objects, size, every
        self.done_objects = self.done_bytes = self.moved_objects = self.moved_bytes = 0
        self.lock = threading.Lock()
        self.started = self.shown = time.monotonic()

    def add(self, size: int, moved: bool) -> None:
        with self.lock:
            self.done_objects += 1
            self.done_bytes += size
            if moved:
                self.moved_objects += 1
                self.moved_bytes += size
            now = time.monotonic()
            if now - self.shown >= self.every:
                self.shown = now
                self.progress(self.line())

    def line(self) -> str:
        return (f"{self.label}: {self.done_objects}/{self.objects} objects, {self.done_bytes / 2**20:.1f}/"
                f"{self.size / 2**20:.1f} MB ({self.moved_objects} objects, {self.moved_bytes / 2**20:.1f} MB "
                f"transferred) in {time.monotonic() - self.started:.1f} s")  # fmt: skip


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- databases ------------------------------------------------------------------------------------
def dump_database(db: Database, repo: Repository, name: str) -> dict[str, Any]:
    """pg_dump's custom format (one consistent snapshot of the database), stored under name."""
    local = repo.staging() / f"{db.label}-{os.getpid()}.dump"
    done = subprocess.run([db.tool("pg_dump"), *db.options(), "-d", db.database, "-Fc", "-f", str(local)],
                          env=db.env(), capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        local.unlink(missing_ok=True)
        raise BackupError(f"pg_dump of {db.database} ({db.label}) failed: {done.stderr.strip()[-1500:]}")
    entry = {"file": name, "database": db.database, "bytes": local.stat().st_size, "sha256": file_digest(local)}
    repo.put_file(name, local, private=True)
    return entry


def _connect(db: Database, dbname: str) -> Any:
    import psycopg2

    return psycopg2.connect(host=db.host, port=db.port, user=db.user, password=db.password, dbname=dbname,
                            connect_timeout=10)  # fmt: skip


def recreate_database(db: Database, password: str) -> None:
    """Drop the database (closing its sessions) and make it again, empty, owned by its role with this password."""
    from psycopg2 import sql

    from cubelab.provision import provision_database

    conn = _connect(db, "postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.database)))
        provision_database(conn, db.role, db.database, password)
    finally:
        conn.close()


def table_counts(db: Database, queries: dict[str, str]) -> dict[str, int]:
    """Each query's count, or nothing when the database has no mlflow tables yet."""
    conn = _connect(db, db.database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.runs') IS NOT NULL")
            if not cur.fetchone()[0]:
                return {}
            out = {}
            for what, query in queries.items():
                cur.execute(query)
                out[what] = int(cur.fetchone()[0])
            return out
    finally:
        conn.close()


def restore_database(db: Database, repo: Repository, entry: dict[str, Any], password: str) -> None:
    """Replace the database with the dump: made again, empty and owned by its role (with the role's password);
    pg_restore then loads everything in one transaction, as that role, so a failure leaves it empty."""
    local = repo.staging() / f"{db.label}-{os.getpid()}.restore"
    repo.get_file(entry["file"], local)
    try:
        if file_digest(local) != entry["sha256"]:
            raise BackupError(f"{entry['file']} does not match its digest in the manifest: the backup is damaged")
        recreate_database(db, password)
        argv = [db.tool("pg_restore"), *db.options(), "-d", db.database, "--no-owner", "--no-acl",
                f"--role={db.role}", "--single-transaction", "--exit-on-error", str(local)]  # fmt: skip
        done = subprocess.run(argv, env=db.env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BackupError(f"pg_restore into {db.database} ({db.label}) failed: {done.stderr.strip()[-1500:]}")
    finally:
        local.unlink(missing_ok=True)


# -- buckets --------------------------------------------------------------------------------------
def list_bucket(s3: Any, bucket: str) -> list[dict[str, Any]]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            found.append({"key": o["Key"], "size": o["Size"], "etag": o.get("ETag", "").strip('"')})
    return found


def read_index(repo: Repository, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in repo.read_text(name).splitlines() if line]


def backup_bucket(s3: Any, bucket: str, repo: Repository, previous: Iterable[dict[str, Any]], progress: Progress,
                  label: str) -> tuple[list[dict[str, Any]], dict[str, int]]:  # fmt: skip
    """Copy every object of the bucket into the repository's object store, except those the previous index
    already holds unchanged (same key, size and ETag, and the object is in the repository). Returns the index
    (key, size, etag, sha256 of each object) and counts."""
    known = {(e["key"], e["size"], e["etag"]): e["sha256"] for e in previous}
    listing = list_bucket(s3, bucket)
    meter = Meter(progress, label, len(listing), sum(o["size"] for o in listing))
    staging = repo.staging()
    vanished: list[str] = []

    def copy(entry: dict[str, Any]) -> dict[str, Any] | None:
        digest = known.get((entry["key"], entry["size"], entry["etag"]))
        if digest and repo.exists(blob_name(digest)):
            meter.add(entry["size"], moved=False)
            return entry | {"sha256": digest}
        local = staging / f"in-{threading.get_ident()}"
        hasher, size = hashlib.sha256(), 0
        try:
            body = s3.get_object(Bucket=bucket, Key=entry["key"])["Body"]
        except s3.exceptions.NoSuchKey:  # deleted since the listing (by gc): nothing refers to it any more
            vanished.append(entry["key"])
            return None
        with open(local, "wb") as fh:
            for chunk in body.iter_chunks(CHUNK):
                hasher.update(chunk)
                fh.write(chunk)
                size += len(chunk)
        digest = hasher.hexdigest()
        if repo.exists(blob_name(digest)):  # the same bytes under another key, or from another team
            local.unlink()
        else:
            repo.put_file(blob_name(digest), local)
        meter.add(size, moved=True)
        return entry | {"size": size, "sha256": digest}

    with ThreadPoolExecutor(WORKERS) as pool:
        index = [e for e in pool.map(copy, listing) if e is not None]
    progress(meter.line())
    counts = {"objects": len(index), "bytes": sum(e["size"] for e in index), "copied_objects": meter.moved_objects,
              "copied_bytes": meter.moved_bytes, "vanished": len(vanished)}  # fmt: skip
    return index, counts


def restore_bucket(s3: Any, bucket: str, repo: Repository, index: list[dict[str, Any]], progress: Progress,
                   label: str, present: Iterable[str]) -> dict[str, int]:  # fmt: skip
    """Put every indexed object back under its key, checking each one's digest, then remove the objects the
    backup does not have from those present before (the bucket ends equal to the backup; its writers, the
    team's tracking server, are stopped)."""
    meter = Meter(progress, label, len(index), sum(e["size"] for e in index))
    staging = repo.staging()

    def put(entry: dict[str, Any]) -> None:
        name = blob_name(entry["sha256"])
        if entry["size"] <= SMALL:
            data = repo.read_bytes(name)
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise BackupError(f"{name} (for {entry['key']}) does not match its digest: the backup is damaged")
            s3.put_object(Bucket=bucket, Key=entry["key"], Body=data)
        else:
            local = staging / f"out-{threading.get_ident()}"
            repo.get_file(name, local)
            try:
                if file_digest(local) != entry["sha256"]:
                    raise BackupError(f"{name} (for {entry['key']}) does not match its digest: the backup is damaged")
                s3.upload_file(str(local), bucket, entry["key"])
            finally:
                local.unlink(missing_ok=True)
        meter.add(entry["size"], moved=True)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(put, index))
    wanted = {e["key"] for e in index}
    extra = [key for key in present if key not in wanted]
    for start in range(0, len(extra), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in extra[start : start + 1000]]})
    progress(meter.line() + (f"; {len(extra)} object(s) not in the backup removed" if extra else ""))
    return {"objects": len(index), "bytes": meter.done_bytes, "removed": len(extra)}
