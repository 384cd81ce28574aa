"""Local processes: start them in their own process group, record them as they start, stop them for sure.

A record (<state>/run/<name>.json) is written the moment a process exists, so a start that fails half-way
still leaves everything it started findable by `down`.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


class StartError(Exception):
    """A service did not come up. Names the service, says why and carries the end of its log."""

    def __init__(self, service: str, reason: str, log: Path | None = None) -> None:
        self.service = service
        self.reason = reason
        self.log = log
        tail = log_tail(log) if log else ""
        text = f"{service}: {reason}"
        if tail:
            text += f"\n--- last lines of {log} ---\n{tail}"
        super().__init__(text)


def log_tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 16384))
        text = fh.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ProcessRecord:
    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: str
    stop_signal: int = signal.SIGTERM
    fingerprint: str = ""

    def process(self) -> psutil.Process | None:
        """The live process this record describes, or None (gone, or the pid was reused)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None


class ProcessTable:
    """The records of the processes one stack has started, kept under <state>/run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def get(self, name: str) -> ProcessRecord | None:
        path = self._path(name)
        if not path.exists():
            return None
        return ProcessRecord(**json.loads(path.read_text()))

    def all(self) -> list[ProcessRecord]:
        if not self.run_dir.exists():
            return []
        return [ProcessRecord(**json.loads(p.read_text())) for p in sorted(self.run_dir.glob("*.json"))]

    def put(self, record: ProcessRecord) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(record.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self._path(record.name))

    def forget(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def running(self, name: str) -> psutil.Process | None:
        record = self.get(name)
        return record.process() if record else None

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        log: Path,
        user: str | None = None,
        cwd: Path | None = None,
        umask: int = -1,
        stop_signal: int = signal.SIGTERM,
        fingerprint: str = "",
    ) -> ProcessRecord:
        """Start argv in a new session with output to log; record it before returning."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name} ===\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    user=user,
                    # the account's own group and no other: Popen's user= alone keeps the caller's (root's) group
                    group=pwd.getpwnam(user).pw_gid if user else None,
                    extra_groups=[] if user else None,
                    cwd=cwd,
                    umask=umask,
                )
            except OSError as exc:
                raise StartError(name, f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            created = time.time()
        record = ProcessRecord(name, proc.pid, created, argv, str(log), int(stop_signal), fingerprint)
        self.put(record)
        return record

    def stop(self, name: str, timeout: float = 15.0) -> bool:
        """Stop the named process and its whole process group. Returns whether anything was running."""
        record = self.get(name)
        if record is None:
            return False
        proc = record.process()
        was_running = proc is not None
        if proc is not None:
            _stop_group(proc, record.stop_signal, timeout)
        self.forget(name)
        return was_running


def _stop_group(proc: psutil.Process, sig: int, timeout: float) -> None:
    try:
        pgid = os.getpgid(proc.pid)
        members = [proc, *proc.children(recursive=True)]
    except (ProcessLookupError, psutil.NoSuchProcess):
        return
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    _, alive = psutil.wait_procs(members, timeout=timeout)
    if alive:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
    _reap(proc.pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_healthy(
    record: ProcessRecord,
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
) -> None:
    """Wait until check() is true; fail early, with the log's end, if the process dies."""
    deadline = time.monotonic() + timeout
    while True:
        if record.process() is None:
            _reap(record.pid)
            raise StartError(record.name, "the process exited during start-up", Path(record.log))
        try:
            if check():
                return
        except Exception:  # noqa: BLE001, S110 - not ready yet; keep polling until the deadline
            pass
        if time.monotonic() > deadline:
            raise StartError(record.name, f"not healthy after {timeout:.0f} s", Path(record.log))
        time.sleep(interval)


def port_owner(port: int, host: str = "127.0.0.1") -> str | None:
    """None when port is free on host; else a description of what holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections of a stopped server in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            pass
        else:
            return None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass
    return "another process"


def tree_memory_mb(proc: psutil.Process, kind: str = "rss") -> float:
    """Memory of a process and all its descendants, in MiB (rss, or pss which splits shared pages)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info() if kind == "pss" else p.memory_info()
            total += getattr(info, kind)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def free_tcp_port() -> int:
    """A loopback port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_marked(marker: str, timeout: float = 10.0, spare: str | None = None, only: str | None = None) -> list[int]:
    """Stop every process whose environment has CUBELAB_STACK=marker (servers the hub left, orphans), except
    those whose environment has the variable `spare`; with `only`, just those that have that variable."""
    needle = f"CUBELAB_STACK={marker}".encode()
    found = []
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except (OSError, psutil.NoSuchProcess):
            continue
        names = {v.split(b"=", 1)[0] for v in env}
        if needle in env and not (spare and spare.encode() in names) and (only is None or only.encode() in names):
            found.append(proc)
    for proc in found:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in found]


def wait_http(url: str, timeout: float = 90.0) -> None:
    """Wait until url answers 200 (a server that someone else started)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URLs of our servers
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)
