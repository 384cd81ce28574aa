"""platform_tests run inside a deployment (compose's platform-tests service, the Helm release's test pod): which
modules each target runs, and the skips each target is known to have.

A nested run passes only when it skipped exactly what its target is expected to skip. A module that skips because
the target's description lost a key (`dask_gateway`, `metrics`, `faults`, ...) then fails the outer test instead of
passing quietly, and so does an expected skip that no longer happens (the list has gone stale).
"""

from __future__ import annotations

import re

# The modules that check something of the target itself: its access rules, isolation, storage, metrics, faults, the
# gateway, and one kernel smoke per kernel. The notebooks and the model training run once, on the embedded stack.
KERNEL_SMOKE = "platform_tests/test_kernels.py::test_each_kernel_runs_its_framework_and_logs_to_the_team"
COMPOSE_SUITE = [
    *(f"platform_tests/test_{name}.py" for name in "tracking storage access artifacts metrics hub isolation faults "
      "gateway".split()),
    KERNEL_SMOKE,
]  # fmt: skip
# The Helm release's test pod has no user server (KubeSpawner needs an API server): no hub, kernel or gateway tests.
HELM_SUITE = [f"platform_tests/test_{name}.py" for name in ("tracking", "storage", "access", "artifacts", "metrics")]
# With OIDC, what the login changes: who may do what (access) and who the server says wrote a run (tracking).
HELM_OIDC_SUITE = [f"platform_tests/test_{name}.py" for name in ("tracking", "access")]

# (module, the start of its reason) for every skip a target is expected to have, with why.
EXPECTED_SKIPS: dict[str, set[tuple[str, str]]] = {
    "compose": {
        # the example config has no operator
        ("platform_tests/test_access.py", "no operator in this deployment"),
        # compose's clusters run inside the gateway's container and serve no dashboard (docs/dask.md)
        ("platform_tests/test_gateway.py", "this deployment's clusters serve no dashboard"),
        ("platform_tests/test_gateway.py", "this deployment has no inner gateway ports on the users' machine"),
        ("platform_tests/test_gateway.py", "this deployment's clusters have no dashboard ports on the users' machine"),
    },
    "helm-local": {
        ("platform_tests/test_access.py", "this deployment cannot delete hub users"),
        ("platform_tests/test_access.py", "no operator in this deployment"),
    },
    "helm-oidc": {
        ("platform_tests/test_access.py", "this deployment cannot delete hub users"),
        ("platform_tests/test_access.py", "no operator in this deployment"),
    },
}

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # a run with a terminal (podman-compose run) colours its report
SKIP_LINE = re.compile(r"^SKIPPED \[\d+\] (?P<path>\S+?\.py)(?::\d+)?: (?P<reason>.+)$")


def skips(output: str) -> set[tuple[str, str]]:
    """(module, reason) of each skip that pytest -rs reported."""
    found = set()
    for line in ANSI.sub("", output).splitlines():
        if match := SKIP_LINE.match(line.strip()):
            path = match["path"][match["path"].index("platform_tests/") :] if "platform_tests/" in match["path"] \
                else match["path"]  # fmt: skip
            found.add((path, match["reason"].strip()))
    return found


def unexpected_skips(output: str, target: str) -> list[str]:
    """What differs from the target's expected skips, as sentences; empty when the run skipped exactly those."""
    seen, expected = skips(output), EXPECTED_SKIPS[target]
    problems = [f"unexpected skip in {path}: {reason}" for path, reason in sorted(seen)
                if not any(path == p and reason.startswith(r) for p, r in expected)]  # fmt: skip
    problems += [f"expected skip did not happen (stale list?): {path}: {reason}" for path, reason in sorted(expected)
                 if not any(path == p and r.startswith(reason) for p, r in seen)]  # fmt: skip
    return problems


def check_run(output: str, code: int, target: str) -> None:
    """The nested run passed, ran tests, and skipped exactly what the target is expected to."""
    summary = [line for line in ANSI.sub("", output).splitlines() if " passed" in line]
    assert code == 0 and summary, output[-5000:]
    assert "failed" not in summary[-1] and "error" not in summary[-1], output[-3000:]
    problems = unexpected_skips(output, target)
    assert not problems, f"{target}: the nested run's skips differ from the expected list (deploy/tests/nested.py):\n" \
        + "\n".join(problems) + "\n" + "\n".join(line for line in output.splitlines() if "SKIPPED" in line)  # fmt: skip
