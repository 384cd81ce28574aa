"""Shared test fixtures: embedded stacks brought up by cubelab's own code (deploy/tests/scratch.py)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cubelab.prereqs import describe_missing, missing_requirements

# The test scaffolding (throwaway stacks) lives with the tests, not in the product package. The platform-tests
# image has no deploy/tests: it always tests a deployment it is given, and never imports it.
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "deploy" / "tests"))
if TYPE_CHECKING:
    from scratch import ScratchStacks

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

# hypothesis's pytest plugin imports hypothesis at the terminal summary if no test did. After dask's client
# threads have run in this process, CPython 3.11.7's AST constructor can then fail pytest's rewrite of it with
# "SystemError: AST constructor recursion depth mismatch" (a CPython bug, fixed in 3.11.8), and the summary is
# lost. Importing it first avoids the late rewrite. (The platform-tests image has no hypothesis.)
with contextlib.suppress(ImportError):
    import hypothesis  # noqa: F401


def pytest_report_header() -> list[str]:
    """Before any test runs: each program the suite needs that this machine lacks, and the tests it breaks."""
    if missing := missing_requirements():
        return ["cubelab prerequisites MISSING (make test installs them as root):", describe_missing(missing)]
    return ["cubelab prerequisites: all present (chromium, podman and its helpers)"]


def _print(message: str) -> None:
    print(f"[stack] {message}")


@pytest.fixture(scope="module")
def stacks() -> Iterator[ScratchStacks]:
    from scratch import ScratchStacks

    factory = ScratchStacks(progress=_print)
    yield factory
    factory.close()


# Dask gateway limits of the shared stack's teams that platform_tests/test_gateway.py can reach in a test: a member
# of ocean may run 3 workers in all, 2 per cluster; land's clusters stop after 20 idle seconds.
GATEWAY_LIMITS = {
    "ocean": {"max_workers_per_cluster": 2, "max_workers_per_user": 3, "max_clusters_per_user": 2},
    "land": {"idle_timeout_seconds": 20},
}


@pytest.fixture(scope="session")
def deployment() -> Iterator[dict[str, Any]]:
    """The deployment under test: $CUBELAB_DEPLOYMENT (a description file from `cubelab describe`, or one
    written by the compose or Helm deployment), else an embedded stack with two teams started here."""
    if path := os.environ.get("CUBELAB_DEPLOYMENT"):
        yield json.loads(Path(path).read_text())
        return
    from scratch import DEFAULT_TEAMS, ScratchStacks

    factory = ScratchStacks(progress=_print)
    teams = [team | {"dask_gateway": GATEWAY_LIMITS[team["name"]]} for team in DEFAULT_TEAMS]
    try:
        backend = factory.backend(factory.config(teams=teams, dask_gateway={"enabled": True}))
        backend.up()
        # A stack of its own: the fault tests may kill its services (platform_tests/faults.py).
        yield backend.description() | {"faults": {"kind": "local", "config": str(backend.config.path)}}
    finally:
        factory.close()


# Tiers, as markers (`make test-fast` runs the unit tier: pytest -m "not stack and not containers and not browser").
# A test is in the stack tier when it takes a fixture that starts an embedded stack, or sits in a module that starts
# one itself; containers: it builds or runs images with podman; browser: it drives Chromium.
STACK_FIXTURES = {"stacks", "deployment"}
STACK_MODULES = {"test_backup.py", "test_gateway_restart.py", "test_local_stack.py", "test_monitoring.py",
                 "test_supervisor.py", "test_upgrade.py", "test_hub_config.py"}  # fmt: skip
CONTAINER_MODULES = {"test_compose_run.py", "test_compose_oidc.py", "test_helm_run.py"}
BROWSER_MODULES = {"test_browser.py", "test_oidc.py", "test_subdomains.py"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack: starts an embedded stack (real Postgres, S3, mlflow, hub)")
    config.addinivalue_line("markers", "containers: builds or runs cubelab's images with podman")
    config.addinivalue_line("markers", "browser: drives Debian's Chromium with Playwright")
    # pytest-xdist's own, declared here too for runs without it (the platform-tests image has no xdist).
    config.addinivalue_line("markers", "xdist_group(name): tests that one worker runs together")


# tryfirst: pytest-xdist's worker turns the xdist_group marks into its scopes in its own hook, which must see them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tier markers, and the groups `make test`'s two workers (pytest-xdist, --dist loadgroup) take whole: every
    container test in one group (one podman store, images built once), platform_tests in one (one shared stack,
    the session's `deployment`), every other module a group of its own. The two long groups go first, so that each
    worker starts on one and the modules share out what is left."""
    for item in items:
        path = Path(str(item.fspath))
        relative = path.relative_to(ROOT)
        group = str(relative)
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())) or path.name in STACK_MODULES:
            item.add_marker(pytest.mark.stack)
        if path.name in CONTAINER_MODULES or relative.parts[0] == "images":
            item.add_marker(pytest.mark.containers)
            group = "containers"
        elif relative.parts[0] == "platform_tests":
            group = "platform_tests"
        if path.name in BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)
        item.add_marker(pytest.mark.xdist_group(group))
    first = {"containers": 0, "platform_tests": 1}
    items.sort(key=lambda item: first.get(_group(item), 2))  # stable: the order within each group is kept


def _group(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker else ""
