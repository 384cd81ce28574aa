"""The embedded stack's supervisor: brings back a service that dies, and rotates the services' logs by size.

`cubelab up` starts it as one more recorded process (`supervisor`, run as whoever ran `up`); `cubelab down`
stops it first, so it never restarts what `down` is stopping. Each half second it looks at the stack's process
records: a service whose process is gone is started again exactly as `up` would start it
(`LocalBackend.revive`), at once the first time and after a pause that doubles with each further restart in
the window (1, 2, 4 s ... up to supervision.max_pause_seconds). After supervision.max_restarts restarts within
supervision.window_seconds it leaves the service down and records why; `cubelab status` shows that and the
restart count, and `cubelab up` tries again. `up`, `down` and the supervisor take the stack's lock
(ProcessTable.lock), so they never act on the same process at once.

Logs are rotated by copying and truncating (NAME.log -> NAME.log.1 -> ...): the services keep their open log
files, opened for appending, so they write on at the start of the emptied file. Lines written between the copy
and the truncation are lost; a few lines, once per rotation.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cubelab.config import Supervision, load
from cubelab.procs import ProcessRecord, StartError, wait_until

if TYPE_CHECKING:
    from cubelab.backends.local.stack import LocalBackend

NAME = "supervisor"
TICK = 0.5  # seconds between looks


def restart_pause(recent: int, policy: Supervision) -> float | None:
    """Seconds to wait before the next restart of a service restarted `recent` times within the window, or None
    when it has reached the limit and should stay down."""
    if recent >= policy.max_restarts:
        return None
    return 0.0 if recent == 0 else min(2.0 ** (recent - 1), policy.max_pause_seconds)


def rotate(log: Path, max_bytes: int, keep: int) -> bool:
    """Rotate log when it is larger than max_bytes, keeping `keep` old ones. Returns whether it rotated."""
    try:
        if log.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{i}")
        if older.exists():
            older.replace(log.with_name(f"{log.name}.{i + 1}"))
    shutil.copyfile(log, log.with_name(f"{log.name}.1"))
    os.truncate(log, 0)
    return True


class Supervisor:
    def __init__(self, backend: LocalBackend, say: Callable[[str], None] = print) -> None:
        self.backend = backend
        self.say = say
        self.history: dict[str, list[float]] = {}  # restart times (monotonic) per service

    def tick(self) -> None:
        policy = self.backend.config.supervision
        procs = self.backend.procs
        with procs.lock():
            dead = [r for r in procs.all() if r.name != NAME and not r.given_up and r.process() is None]
        for record in dead:
            self._restart(record, policy)
        max_bytes = int(policy.log_max_mb * 2**20)
        for record in procs.all():
            if rotate(Path(record.log), max_bytes, policy.log_keep):
                self.say(f"rotated {record.log} (over {policy.log_max_mb:g} MB)")

    def _restart(self, record: ProcessRecord, policy: Supervision) -> None:
        now = time.monotonic()
        recent = [t for t in self.history.get(record.name, []) if now - t < policy.window_seconds]
        self.history[record.name] = recent
        pause = restart_pause(len(recent), policy)
        procs = self.backend.procs
        if pause is None:
            reason = (f"left down by the supervisor after {len(recent)} restarts within {policy.window_seconds} s "
                      f"(see {record.log}); `cubelab up` tries again")  # fmt: skip
            with procs.lock():
                if (current := procs.get(record.name)) and current.pid == record.pid:
                    procs.put(replace(current, given_up=reason))
            self.say(f"{record.name}: {reason}")
            return
        if recent and now - recent[-1] < pause:
            return  # still pausing
        recent.append(now)
        self.say(f"{record.name} (pid {record.pid}) is gone: restart {len(recent)} within the window")
        started, healthy = None, None
        with procs.lock():
            current = procs.get(record.name)
            if current is None or current.pid != record.pid:
                return  # `up` or `down` acted on it meanwhile
            try:
                started, healthy = self.backend.revive(record.name)
            except (StartError, KeyError, OSError) as exc:
                self.say(f"{record.name}: restart failed: {exc}")
            after = procs.get(record.name) or current
            procs.put(replace(after, restarts=current.restarts + 1))
        if started is not None and healthy is not None:
            t0 = time.monotonic()
            try:  # outside the lock: `down` need not wait for a slow start
                wait_until(healthy, 90, what=record.name, record=started)
                self.say(f"{record.name} serving again (pid {started.pid}, {time.monotonic() - t0:.1f} s)")
            except StartError as exc:
                self.say(f"{record.name}: did not come back: {exc}")

    def run(self) -> None:
        self.say(f"supervising {self.backend.paths.root} (pid {os.getpid()})")
        while True:
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - one bad look must not end the supervision
                self.say(f"supervisor: {type(exc).__name__}: {exc}")
            time.sleep(TICK)


def main(argv: list[str] | None = None) -> None:
    from cubelab.backends.local.stack import LocalBackend

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: python -m cubelab.supervise CONFIG (started by `cubelab up`)")

    def say(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    Supervisor(LocalBackend(load(args[0]), progress=say), say).run()


if __name__ == "__main__":
    main()
