"""The embedded stack's process lifecycle, with real processes: a record never stands for another process that
got its pid (the pid-reuse guard), stopping escalates to SIGKILL for a process group that ignores SIGTERM, a
service is restarted exactly when its launch changed, and the one wait helper fails early and says why."""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from cubelab.procs import Launch, ProcessTable, StartError, free_tcp_port, wait_until

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
STUBBORN = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {IGNORE_TERM!r}])
time.sleep(60)
"""


def _launch(tmp_path: Path, name: str, code: str, env: dict[str, str] | None = None, **kw: object) -> Launch:
    argv = [sys.executable, "-c", code]
    return Launch(name, argv, env or {}, tmp_path / f"{name}.log", tmp_path, **kw)  # type: ignore[arg-type]


def _start(table: ProcessTable, tmp_path: Path, name: str, code: str) -> int:
    return table.start(_launch(tmp_path, name, code)).pid


def test_a_record_never_stands_for_a_reused_pid(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "run")
    pid = _start(table, tmp_path, "sleeper", "import time; time.sleep(60)")
    try:
        record = table.get("sleeper")
        assert record is not None and record.process() is not None and record.process().pid == pid
        # The same pid with another start time is another process (the kernel reused the number).
        table.put(dataclasses.replace(record, name="stale", create_time=record.create_time - 3600))
        assert table.running("stale") is None
        assert table.stop("stale") is False  # and stopping the stale record does not touch it
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    finally:
        table.stop("sleeper", timeout=5)
    assert table.running("sleeper") is None and table.get("sleeper") is None


def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "run")
    pid = _start(table, tmp_path, "stubborn", STUBBORN)
    deadline = time.monotonic() + 20
    while not (children := psutil.Process(pid).children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children, "the stubborn process did not start its child"
    time.sleep(0.3)  # both have set SIG_IGN by now
    group = [psutil.Process(pid), *children]
    t0 = time.monotonic()
    assert table.stop("stubborn", timeout=1.0) is True
    took = time.monotonic() - t0
    for proc in group:
        try:
            assert proc.status() == psutil.STATUS_ZOMBIE, f"{proc.pid} survived the stop"
        except psutil.NoSuchProcess:
            pass
    # SIGTERM was ignored for the whole timeout, then SIGKILL ended both at once.
    assert 1.0 <= took < 8.0, took


def test_stop_of_a_polite_process_is_quick(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "run")
    _start(table, tmp_path, "polite", "import time; time.sleep(60)")
    t0 = time.monotonic()
    assert table.stop("polite", timeout=10.0) is True
    assert time.monotonic() - t0 < 2.0
    assert table.stop("polite") is False  # nothing left to stop


SLEEP = "import time; time.sleep(60)"


def test_ensure_restarts_exactly_when_the_launch_changed(tmp_path: Path) -> None:
    table, said = ProcessTable(tmp_path / "run"), []
    starts: list[str] = []
    first = _launch(tmp_path, "svc", SLEEP, env={"A": "1", "PATH": "/usr/bin"}, before_start=lambda: starts.append("x"))
    try:
        record = table.ensure(first, said.append)
        assert record is not None and starts == ["x"]
        # The same launch, even from a shell with another PATH: nothing restarts.
        same = dataclasses.replace(first, env={"A": "1", "PATH": "/opt/other/bin:/usr/bin"})
        assert table.ensure(same, said.append) is None and starts == ["x"] and said == []
        # Another setting: the old process stops, a new one starts.
        changed = dataclasses.replace(first, env={"A": "2"})
        again = table.ensure(changed, said.append)
        assert again is not None and again.pid != record.pid and starts == ["x", "x"]
        assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE
        assert said == ["svc: settings or code changed; restarting"]
        # New code restarts it too.
        code = tmp_path / "server.py"
        code.write_text("v1")
        with_code = dataclasses.replace(changed, code=(code,))
        third = table.ensure(with_code, said.append)
        assert third is not None and table.ensure(with_code, said.append) is None
        code.write_text("v2")
        assert table.ensure(with_code, said.append) is not None
    finally:
        table.stop("svc", timeout=5)


def test_a_busy_port_fails_the_start_naming_its_setting(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "run")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        launch = _launch(tmp_path, "svc", SLEEP, ports={port: "ports.hub"})
        with pytest.raises(StartError) as info:
            table.ensure(launch, print)
    assert f"port {port} (ports.hub) is in use" in str(info.value)
    assert table.get("svc") is None  # nothing started, nothing recorded


def test_wait_until_fails_at_once_with_the_log_when_the_process_dies(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path / "run")
    record = table.start(_launch(tmp_path, "dies", "import sys; print('cannot open the data folder'); sys.exit(3)"))
    t0 = time.monotonic()
    with pytest.raises(StartError) as info:
        wait_until(lambda: False, 30, what="dies", record=record)
    assert time.monotonic() - t0 < 10
    assert "exited during start-up" in str(info.value) and "cannot open the data folder" in str(info.value)


def test_wait_until_names_the_last_error_at_its_deadline() -> None:
    port = free_tcp_port()

    def connect() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    with pytest.raises(StartError) as info:
        wait_until(connect, 0.5, what="the thing", interval=0.1)
    assert info.value.service == "the thing"
    assert "not ready after 0 s" in str(info.value) and "ConnectionRefusedError" in str(info.value)
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), 5, what="the thing", interval=0.01)  # true on the third try: returns
