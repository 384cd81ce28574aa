"""The embedded stack's supervisor (cubelab.backends.local.supervisor), with a real stack: a service that cannot
come back is retried with growing pauses and then left down with its reason in `cubelab status`, and logs are
rotated by size while the services keep writing. That a service killed during logging comes back with no
command run and loses nothing acknowledged is platform_tests/test_faults.py (the local injector waits for the
supervisor). The pause and rotation rules themselves are unit-tested at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends.local.stack import LocalBackend
from cubelab.backends.local.supervisor import restart_pause, rotate
from cubelab.config import Supervision
from cubelab.procs import wait_until

POLICY = {"max_restarts": 3, "window_seconds": 600, "max_pause_seconds": 1, "log_max_mb": 0.05, "log_keep": 2}


@pytest.fixture(scope="module")
def stack(stacks: ScratchStacks) -> LocalBackend:
    backend = stacks.backend(stacks.config(teams=[{"name": "ocean", "members": ["alice"]}], supervision=POLICY))
    backend.up()
    return backend


def test_a_service_that_cannot_come_back_is_left_down_with_its_reason(stack: LocalBackend) -> None:
    team = stack.config.team("ocean")
    record = stack.procs.running(team.service)
    assert record is not None
    supervisor = stack.procs.running("supervisor")
    assert supervisor is not None
    # Once the server is killed, a folder takes the place of its log file: every restart fails, as one that
    # crashes at start would. (Its port cannot be taken: the socket holder keeps it, see test_local_stack's
    # squatter.) The supervisor is paused meanwhile, or it could restart the server before the folder is made.
    log_file = stack.paths.logs / f"{team.service}.log"
    kept = log_file.with_name("kept.log")
    os.kill(supervisor.pid, signal.SIGSTOP)
    try:
        os.kill(record.pid, signal.SIGKILL)
        psutil.Process(record.pid).wait(timeout=10)
        log_file.rename(kept)
        log_file.mkdir()
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    t0 = time.monotonic()
    try:

        def given_up() -> bool:
            return bool(next(r for r in stack.status() if r.name == team.service).note)

        wait_until(given_up, 60, what="giving up", interval=0.3)
        took = time.monotonic() - t0
        row = next(r for r in stack.status() if r.name == team.service)
        assert row.restarts == 3 and row.pid is None and not row.healthy
        assert "left down by the supervisor after 3 restarts" in row.note and "cubelab up" in row.note
        assert took >= 0 + 1 + 1 - 0.5  # pauses of 0, 1 and 1 s (max_pause_seconds) between the three tries
        status = subprocess.run([sys.executable, "-m", "cubelab", "-c", str(stack.config.path), "status"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert status.returncode == 3, status.stdout + status.stderr
        assert f"{team.service}: left down by the supervisor" in status.stdout
        log = (stack.paths.logs / "supervisor.log").read_text()
        assert f"{team.service}: restart failed" in log, log[-2000:]
        time.sleep(2)
        assert next(r for r in stack.status() if r.name == team.service).restarts == 3  # no further tries
    finally:
        log_file.rmdir()
        kept.rename(log_file)
    stack.up()  # the operator fixed the cause: `up` starts it and clears the verdict
    row = next(r for r in stack.status() if r.name == team.service)
    assert row.healthy and not row.note and row.restarts == 3


def test_a_killed_service_comes_back_by_itself(stack: LocalBackend) -> None:
    record = stack.procs.running("hub")
    assert record is not None
    t0 = time.monotonic()
    os.kill(record.pid, signal.SIGKILL)

    def serving() -> bool:
        row = next(r for r in stack.status() if r.name == "hub")
        return row.healthy and row.pid != record.pid

    wait_until(serving, 60, what="the hub's restart", interval=0.3)
    print(f"hub serving again {time.monotonic() - t0:.1f} s after SIGKILL")
    assert requests.get(f"{stack.hub.url}/hub/api/", timeout=10).status_code == 200
    log = (stack.paths.logs / "supervisor.log").read_text()
    assert "hub (pid" in log and "Warning" not in log
    rows = {r.name: r for r in stack.status()}
    # The hub it restarted is its child now, but is counted on the hub's row, not twice.
    assert rows["supervisor"].rss_mb is not None and rows["hub"].rss_mb is not None
    assert rows["supervisor"].rss_mb < rows["hub"].rss_mb


def test_logs_are_rotated_while_the_services_write_on(stack: LocalBackend) -> None:
    log = stack.paths.logs / "hub.log"
    with open(log, "a") as fh:
        fh.write("filler line of an old log\n" * 4000)  # ~100 KB, twice log_max_mb
    rotated = lambda: log.with_name("hub.log.1").exists() and log.stat().st_size < 52_000  # noqa: E731
    wait_until(rotated, 10, what="rotation", interval=0.3)
    assert "filler line" in log.with_name("hub.log.1").read_text()
    marker = f"/hub/api/?after-rotation-{time.time_ns()}"
    requests.get(f"{stack.hub.url}{marker}", timeout=10)
    wait_until(lambda: marker.split("?")[1] in log.read_text(), 10, what="the hub writing into its log", interval=0.3)
    with open(log, "a") as fh:
        fh.write("second filler\n" * 8000)
    wait_until(lambda: log.with_name("hub.log.2").exists(), 10, what="the second rotation", interval=0.3)
    assert not log.with_name("hub.log.3").exists()  # log_keep: 2


# --- pure rules ---------------------------------------------------------------------------------------------


def test_restart_pauses_double_up_to_the_limit_then_stop() -> None:
    policy = Supervision(max_restarts=6, max_pause_seconds=5)
    assert [restart_pause(n, policy) for n in range(7)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0, None]


def test_rotate_keeps_the_newest_logs(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    assert rotate(log, 10, 2) is False  # no log yet
    for text in ("first run of output\n", "second run of output\n", "third run of output\n"):
        log.write_text(text)
        assert rotate(log, 10, 2) is True
        assert log.read_text() == ""
    assert (tmp_path / "svc.log.1").read_text() == "third run of output\n"
    assert (tmp_path / "svc.log.2").read_text() == "second run of output\n"
    assert not (tmp_path / "svc.log.3").exists()
    log.write_text("short\n")
    assert rotate(log, 10, 2) is False and log.read_text() == "short\n"
