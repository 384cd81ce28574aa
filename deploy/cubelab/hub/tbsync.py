"""TensorBoard logs that every framework can write and every teammate can read: a Jupyter server extension in
users' servers.

In a team session $TENSORBOARD_LOGDIR is a folder in the user's home (`~/tensorboard/TEAM`), which TensorFlow's
writers (Keras's TensorBoard callback, tf.summary) and PyTorch's SummaryWriter can all write; neither TensorFlow
nor Keras can write `s3://` ("File system scheme 's3' not implemented"). This extension copies what appears there,
every SYNC_SECONDS, to the team's bucket under `tensorboard/USER/` ($CUBELAB_TENSORBOARD_SHARED), with the
session's own team-scoped S3 keys; the TensorBoard in JupyterLab (cubelab.hub.tensorboard) reads the team's
whole `tensorboard/` prefix, so teammates see each other's runs as USER/RUN. Event files only grow: a file is
copied again when its size or modification time changes.

The spawner may give a relative $TENSORBOARD_LOGDIR (the hub cannot know a container's home): the extension makes
it absolute under $HOME before any kernel starts, so kernels inherit the absolute path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYNC_SECONDS = float(os.environ.get("CUBELAB_TENSORBOARD_SYNC_SECONDS", "10"))
SHARED = "CUBELAB_TENSORBOARD_SHARED"  # s3://BUCKET/PREFIX of the team's TensorBoard runs (team sessions only)


def local_logdir(env: dict[str, str] | os._Environ[str]) -> Path:
    """$TENSORBOARD_LOGDIR as an absolute folder (relative: under $HOME)."""
    logdir = env.get("TENSORBOARD_LOGDIR") or "tensorboard"
    path = Path(os.path.expanduser(logdir))
    return path if path.is_absolute() else Path(env.get("HOME") or os.path.expanduser("~")) / path


class Syncer:
    """Copies new and grown files under `folder` to `upload(path, key)` as PREFIX/USER/RELATIVE-PATH."""

    def __init__(self, folder: Path, prefix: str, user: str, upload: Callable[[Path, str], None],
                 known: dict[str, int] | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.prefix = f"{prefix.strip('/')}/{user}" if prefix.strip("/") else user
        self.upload = upload
        self.sent: dict[str, tuple[int, int]] = {}
        self.known_sizes = dict(known or {})  # what the bucket already holds (key -> size), from a listing at start
        self._lock = threading.Lock()

    def key(self, path: Path) -> str:
        return f"{self.prefix}/{path.relative_to(self.folder).as_posix()}"

    def once(self) -> list[str]:
        """Copy every file that is new or changed since the last copy; returns the keys copied."""
        copied = []
        with self._lock:
            for root, _dirs, files in os.walk(self.folder):
                for name in files:
                    path = Path(root, name)
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    key, state = self.key(path), (stat.st_size, stat.st_mtime_ns)
                    if self.sent.get(key) == state:
                        continue
                    if key not in self.sent and self.known_sizes.get(key) == stat.st_size:
                        self.sent[key] = state  # copied before this server started
                        continue
                    self.upload(path, key)
                    self.sent[key] = state
                    copied.append(key)
        return copied


def s3_syncer(env: dict[str, str] | os._Environ[str]) -> Syncer:
    """A Syncer from the session's environment: its logdir, the team's shared prefix and S3 keys."""
    import boto3

    bucket, _, prefix = env[SHARED].removeprefix("s3://").partition("/")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("S3_ENDPOINT")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"))
    user = env.get("JUPYTERHUB_USER") or env.get("USER") or "user"
    syncer = Syncer(local_logdir(env), prefix, user, lambda path, key: client.upload_file(str(path), bucket, key))
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{syncer.prefix}/"):
            syncer.known_sizes.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    except Exception:  # noqa: BLE001 - nothing known: everything is copied once
        syncer.known_sizes.clear()
    return syncer


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cubelab.hub.tbsync"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    folder = local_logdir(os.environ)
    os.environ["TENSORBOARD_LOGDIR"] = str(folder)  # kernels started from here inherit the absolute path
    if not os.environ.get(SHARED):
        return  # not a team session: the logs stay in the home folder
    folder.mkdir(parents=True, exist_ok=True)
    from tornado.ioloop import PeriodicCallback

    state: dict[str, Any] = {"syncer": None, "busy": False}

    def run() -> None:
        try:
            if state["syncer"] is None:
                state["syncer"] = s3_syncer(os.environ)
            if copied := state["syncer"].once():
                serverapp.log.info("cubelab: %d TensorBoard file(s) copied to %s", len(copied), os.environ[SHARED])
        except Exception as exc:  # noqa: BLE001 - storage away: try again at the next tick
            serverapp.log.warning("cubelab: TensorBoard logs not copied (%s); trying again", exc)
        finally:
            state["busy"] = False

    def tick() -> None:
        if not state["busy"]:
            state["busy"] = True
            threading.Thread(target=run, name="cubelab-tensorboard-sync", daemon=True).start()

    PeriodicCallback(tick, SYNC_SECONDS * 1000).start()
    serverapp.log.info("cubelab: TensorBoard logs in %s are copied to %s every %g s", folder, os.environ[SHARED],
                       SYNC_SECONDS)  # fmt: skip
