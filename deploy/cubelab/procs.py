"""Local processes: start them in their own process group, record them as they start, stop them for sure.

A record (<state>/run/<name>.json) is written the moment a process exists, so a start that fails half-way
still leaves everything it started findable by `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from cubelab.plan import LISTEN_FDS_VAR

# How long a restart waits for the ports of the process it replaces to be released.
PORT_GRACE = 10.0


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
    # Kept across the supervisor's restarts (cubelab.backends.local.supervisor): how often it brought the service
    # back, and why it stopped trying, if it did.
    restarts: int = 0
    given_up: str = ""

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


@dataclass(frozen=True)
class Launch:
    """Everything about how one local service runs; every service of the embedded stack (Postgres, S3, each
    tracking server, the hub) is started, restarted on change and stopped through this one shape."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    # Each port the service binds itself, with the setting that names it: a busy port fails the start clearly.
    ports: dict[int, str] = field(default_factory=dict)
    # Ports the stack's socket holder keeps (cubelab.backends.local.sockets), with their settings. Handed over:
    # the service gets the holder's listening socket, as `{fd:PORT}` in argv and in $CUBELAB_LISTEN_FDS
    # ("PORT=FD,..."). Relayed: the holder relays the port to the service's unix socket at the path given, or to
    # tcp:HOST:PORT (a port only root may bind).
    handed: dict[int, str] = field(default_factory=dict)
    relayed: dict[int, tuple[str, Path | str]] = field(default_factory=dict)
    user: str | None = None
    umask: int = -1
    stop_signal: int = signal.SIGTERM
    # Files whose new content restarts the service (its code), and settings it reads from elsewhere.
    code: tuple[Path, ...] = ()
    settings: str = ""
    # Runs right before a (re)start, after the old process is gone and before the ports are checked: accounts,
    # folders, processes a crashed run left behind.
    before_start: Callable[[], None] | None = None

    def fingerprint(self) -> str:
        # Not PATH: it follows the shell that ran `cubelab up`, which is no reason to restart anything.
        env = sorted((k, v) for k, v in self.env.items() if k != "PATH")
        held = [sorted(self.handed), sorted((port, str(path)) for port, (_s, path) in self.relayed.items())]
        h = hashlib.sha256(json.dumps([self.argv, env, self.user, self.umask, *held]).encode())
        h.update(self.settings.encode())
        for path in self.code:
            h.update(path.read_bytes())
        return h.hexdigest()[:16]


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

    @contextlib.contextmanager
    def lock(self, name: str = "processes") -> Iterator[None]:
        """Exclusive use of the stack's processes: `up`, `down` and the supervisor never act at the same time.
        Another name is another lock ("maintenance": backup, restore and gc never overlap)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / (".lock" if name == "processes" else f".{name}.lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def forget(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def running(self, name: str) -> psutil.Process | None:
        record = self.get(name)
        return record.process() if record else None

    def ensure(self, launch: Launch, progress: Callable[[str], None]) -> ProcessRecord | None:
        """Start the service unless it already runs as launched; restart it when its launch changed (command,
        environment, account, code or settings). Returns the new record, or None when nothing started."""
        fingerprint = launch.fingerprint()
        record = self.get(launch.name)
        restarts = record.restarts if record else 0  # the supervisor's count outlives a restart by `up`
        if record and record.process():
            if record.fingerprint == fingerprint:
                return None
            progress(f"{launch.name}: settings or code changed; restarting")
            self.stop(launch.name)
        if launch.before_start:  # first: it may clear what an earlier, crashed run left holding the ports
            launch.before_start()
        if record is not None:
            # The service ran until a moment ago (stopped above, died, or its leftovers just killed): what it
            # started may still be closing its sockets. A port held for longer is someone else's.
            try:
                wait_until(lambda: not any(port_owner(p) for p in launch.ports), PORT_GRACE,
                           what=f"{launch.name}'s ports to be released")  # fmt: skip
            except StartError:
                pass
        for port, setting in launch.ports.items():
            if owner := port_owner(port):
                raise StartError(launch.name, f"port {port} ({setting}) is in use by {owner}")
        started = self.start(launch, fingerprint)
        if restarts:
            started = replace(started, restarts=restarts)
            self.put(started)
        return started

    def start(self, launch: Launch, fingerprint: str = "") -> ProcessRecord:
        """Start the launch in a new session with output to its log; record it before returning."""
        name, argv, user, log = launch.name, launch.argv, launch.user, launch.log
        log.parent.mkdir(parents=True, exist_ok=True)
        fds = self._held_sockets(launch)
        env = launch.env
        if fds:
            env = env | {LISTEN_FDS_VAR: ",".join(f"{port}={fd}" for port, fd in fds.items())}
            argv = [_with_fds(arg, fds) for arg in argv]
        with open(log, "ab") as out, contextlib.ExitStack() as closing:
            for fd in fds.values():
                closing.callback(os.close, fd)  # the child has its own copies
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name} ===\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    pass_fds=tuple(fds.values()),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    user=user,
                    # the account's own group and no other: Popen's user= alone keeps the caller's (root's) group
                    group=pwd.getpwnam(user).pw_gid if user else None,
                    extra_groups=[] if user else None,
                    cwd=launch.cwd,
                    umask=launch.umask,
                )
            except OSError as exc:
                raise StartError(name, f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            created = time.time()
        record = ProcessRecord(name, proc.pid, created, argv, str(log), int(launch.stop_signal), fingerprint)
        self.put(record)
        return record

    def _held_sockets(self, launch: Launch) -> dict[int, int]:
        """Have the socket holder keep the launch's ports; the descriptors of those handed over, by port."""
        from cubelab.backends.local import sockets

        fds: dict[int, int] = {}
        try:
            for port, (_setting, path) in launch.relayed.items():
                sockets.relay(self.run_dir, LOOPBACK, port, path, launch.name)
            for port in launch.handed:
                fds[port] = sockets.hand(self.run_dir, LOOPBACK, port, launch.name)
        except sockets.HoldError as exc:
            for fd in fds.values():
                os.close(fd)
            settings = launch.handed | {port: setting for port, (setting, _p) in launch.relayed.items()}
            busy = {port: owner for port in settings if (owner := port_owner(port))}
            why = "; ".join(f"port {p} ({settings[p]}) is in use by {o}" for p, o in busy.items()) or str(exc)
            raise StartError(launch.name, why) from None
        return fds

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
    alive = _wait_gone(members, timeout)
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
        _wait_gone(alive, 5)
    _reap(proc.pid)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; those still running after timeout. An exited process whose parent
    has not collected it yet (a zombie: another process started it) holds nothing and counts as gone."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def kill_leftovers(record: ProcessRecord, marker: str) -> list[int]:
    """SIGKILL what is left of a dead service's process group (its children, when the leader was killed).
    Only processes of this stack (marker) started since the leader: a reused group id is someone else's."""
    needle = f"CUBELAB_STACK={marker}".encode()
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != record.pid or proc.create_time() < record.create_time - 1.0:
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
            proc.kill()
            found.append(proc)
        except (OSError, psutil.Error):
            continue
    _wait_gone(found, 5)
    _reap(record.pid)
    return [p.pid for p in found]


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    *,
    what: str,
    record: ProcessRecord | None = None,
    interval: float = 0.2,
) -> None:
    """The one way cubelab waits: until check() is true, or a StartError naming `what` after timeout seconds
    (with check's last error). With a record, it fails at once, with the end of its log, if the process dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if record is not None and record.process() is None:
            _reap(record.pid)
            raise StartError(what, "the process exited during start-up", Path(record.log))
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - not ready yet; keep polling until the deadline
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            reason = f"not ready after {timeout:.0f} s" + (f" (last error: {last})" if last else "")
            raise StartError(what, reason, Path(record.log) if record else None)
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2) -> bool:
    """Whether url answers 200 (a server's health endpoint)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs of our servers
            return bool(resp.status == 200)
    except OSError:
        return False


LOOPBACK = "127.0.0.1"


def _with_fds(arg: str, fds: dict[int, int]) -> str:
    for port, fd in fds.items():
        arg = arg.replace(f"{{fd:{port}}}", str(fd))
    return arg


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


def tree_memory_mb(proc: psutil.Process, kind: str = "rss", tree: bool = True) -> float:
    """Memory of a process and all its descendants (tree=False: the process alone), in MiB (rss, or pss which
    splits shared pages)."""
    total = 0
    for p in [proc, *(proc.children(recursive=True) if tree else [])]:
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


def marked_processes(marker: str, spare: str | None = None, only: str | None = None) -> list[psutil.Process]:
    """Every process whose environment has CUBELAB_STACK=marker, except those whose environment has the variable
    `spare`; with `only`, just those that have that variable."""
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
    return found


def kill_marked(marker: str, timeout: float = 10.0, spare: str | None = None, only: str | None = None) -> list[int]:
    """Stop every process of marked_processes(marker, spare, only) (servers the hub left, orphans)."""
    found = marked_processes(marker, spare, only)
    for proc in found:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    for proc in _wait_gone(found, timeout):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in found]
