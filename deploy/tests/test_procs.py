"""The embedded stack's process records, with real processes: a record never stands for another process that
got its pid (the pid-reuse guard), and stopping escalates to SIGKILL for a process group that ignores SIGTERM."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import psutil

from cubelab.procs import ProcessTable

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
STUBBORN = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", {IGNORE_TERM!r}])
time.sleep(60)
"""


def _start(table: ProcessTable, tmp_path: Path, name: str, code: str) -> int:
    record = table.start(name, [sys.executable, "-c", code], env={}, log=tmp_path / f"{name}.log")
    return record.pid


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
