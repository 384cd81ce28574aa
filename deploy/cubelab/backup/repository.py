"""Where backups live: a folder or an S3 prefix, holding content-addressed objects and snapshots.

    REPO/objects/ab/abcdef…    every bucket object once, named by the SHA-256 of its bytes (shared by snapshots)
    REPO/snapshots/ID/          one backup: manifest.json, the database dumps, each team's object index, …

A second backup into the same repository copies only objects it does not hold yet, and a restore checks every
object's digest as it reads it back.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SNAPSHOTS, OBJECTS, MANIFEST = "snapshots", "objects", "manifest.json"


class BackupError(Exception):
    """A backup or restore cannot go on; the message says why and what to do."""


def blob_name(digest: str) -> str:
    return f"{OBJECTS}/{digest[:2]}/{digest}"


class Repository:
    """The operations a backup needs, on names relative to the repository's root."""

    location: str

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def put_file(self, name: str, local: Path, private: bool = False) -> None:
        """Store a local file under name; the local file is moved or removed."""
        raise NotImplementedError

    def get_file(self, name: str, local: Path) -> None:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def write_text(self, name: str, text: str, private: bool = False) -> None:
        raise NotImplementedError

    def read_text(self, name: str) -> str:
        raise NotImplementedError

    def children(self, folder: str) -> list[str]:
        """Names directly under folder (snapshot ids under snapshots/)."""
        raise NotImplementedError

    def staging(self) -> Path:
        """A local folder for files on their way in or out, on the same file system when there is one."""
        raise NotImplementedError

    def snapshot_ids(self) -> list[str]:
        return sorted(i for i in self.children(SNAPSHOTS) if self.exists(f"{SNAPSHOTS}/{i}/{MANIFEST}"))


def refuse_shared_folder(path: Path) -> None:
    """A backup written as root never goes into a folder that another account could change under it. Refused:
    a folder on the way that another account owns or may write to (unless sticky, as /tmp is, and the next one
    is ours), a link another account owns on the way, and, inside an existing folder, any link or anything not
    ours (another account's link would make root write where it points)."""
    me = os.geteuid()
    if me != 0:
        return  # an unprivileged writer (the container targets' backup job) can put nothing where it could not
    ours = {0}
    way = [*reversed(path.parents), path]
    for i, part in enumerate(way):
        try:
            st = part.lstat()
        except FileNotFoundError:
            break
        if st.st_uid not in ours:
            raise BackupError(f"{path}: {part} belongs to another account (uid {st.st_uid}); back up to a folder "
                              "only root can change")  # fmt: skip
        if stat.S_ISLNK(st.st_mode):
            continue  # a link of root's (or ours): where it leads is checked as the next parts are
        shared = st.st_mode & 0o022
        if shared and not (st.st_mode & stat.S_ISVTX and i + 1 < len(way)):
            raise BackupError(f"{path}: {part} can be written by other accounts (mode {oct(st.st_mode & 0o7777)}); "
                              "back up to a folder only root can change")  # fmt: skip
    if not path.exists():
        return
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            st = entry.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid not in ours:
                raise BackupError(f"{path}: {entry} is a link or another account's file; a backup folder holds "
                                  "only what cubelab wrote there")  # fmt: skip


class FolderRepository(Repository):
    def __init__(self, root: Path) -> None:
        self.given = root.absolute()
        self.root = root.resolve()
        self.location = str(self.root)
        self._staging: Path | None = None

    def create(self) -> None:
        refuse_shared_folder(self.given)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def put_file(self, name: str, local: Path, private: bool = False) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(local, 0o600 if private else 0o640)
        os.replace(local, target)

    def get_file(self, name: str, local: Path) -> None:
        shutil.copyfile(self.root / name, local)

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write_text(self, name: str, text: str, private: bool = False) -> None:
        tmp = self.staging() / f"text-{os.getpid()}"
        tmp.write_text(text)
        self.put_file(name, tmp, private)

    def read_text(self, name: str) -> str:
        try:
            return (self.root / name).read_text()
        except FileNotFoundError:
            raise BackupError(f"{self.root / name} is missing: the backup is incomplete") from None

    def children(self, folder: str) -> list[str]:
        path = self.root / folder
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def staging(self) -> Path:
        if self._staging is None:
            self.create()
            self._staging = self.root / ".staging"
            self._staging.mkdir(exist_ok=True, mode=0o700)
        return self._staging


class S3Repository(Repository):
    """s3://BUCKET/PREFIX, with the AWS_* environment's credentials (AWS_ENDPOINT_URL for a non-AWS store)."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise BackupError(f"{url}: an S3 location needs a bucket: s3://BUCKET/PREFIX")
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.location = url.rstrip("/")
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
        self.s3 = client
        self._known: set[str] | None = None
        self._staging = Path(tempfile.mkdtemp(prefix="cubelab-backup-"))
        os.chmod(self._staging, 0o700)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _listing(self, folder: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        args = {"Bucket": self.bucket, "Prefix": self._key(folder).rstrip("/") + "/"}
        if delimiter:
            args["Delimiter"] = "/"
        yield from self.s3.get_paginator("list_objects_v2").paginate(**args)

    def exists(self, name: str) -> bool:
        if name.startswith(OBJECTS + "/"):
            if self._known is None:  # one listing instead of a request per object
                self._known = {o["Key"] for page in self._listing(OBJECTS, False) for o in page.get("Contents", [])}
            return self._key(name) in self._known
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except self.s3.exceptions.ClientError:
            return False

    def put_file(self, name: str, local: Path, private: bool = False) -> None:
        self.s3.upload_file(str(local), self.bucket, self._key(name))
        local.unlink()
        if self._known is not None and name.startswith(OBJECTS + "/"):
            self._known.add(self._key(name))

    def get_file(self, name: str, local: Path) -> None:
        self.s3.download_file(self.bucket, self._key(name), str(local))

    def read_bytes(self, name: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    def write_text(self, name: str, text: str, private: bool = False) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=text.encode())

    def read_text(self, name: str) -> str:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read().decode()
        except self.s3.exceptions.NoSuchKey:
            raise BackupError(f"{self.location}/{name} is missing: the backup is incomplete") from None

    def children(self, folder: str) -> list[str]:
        names = []
        for page in self._listing(folder, True):
            names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def staging(self) -> Path:
        return self._staging


def open_repository(location: str) -> Repository:
    """A folder path or s3://BUCKET/PREFIX."""
    if location.startswith("s3://"):
        return S3Repository(location)
    if "://" in location:
        raise BackupError(f"{location}: backups go to a folder or to s3://BUCKET/PREFIX")
    return FolderRepository(Path(location))


def locate_snapshot(location: str) -> tuple[Repository, str]:
    """BACKUP as given to restore: a repository (its newest snapshot) or one snapshot inside it."""
    trimmed = location.rstrip("/")
    head, _, last = trimmed.rpartition("/")
    if head.endswith("/" + SNAPSHOTS) or head == SNAPSHOTS:
        repo = open_repository(head.rpartition("/")[0] or ".")
        if not repo.exists(f"{SNAPSHOTS}/{last}/{MANIFEST}"):
            raise BackupError(f"{location} is not a backup: it has no {MANIFEST}")
        return repo, last
    repo = open_repository(trimmed)
    ids = repo.snapshot_ids()
    if not ids:
        raise BackupError(f"{location} holds no backup (no {SNAPSHOTS}/*/{MANIFEST})")
    return repo, ids[-1]
