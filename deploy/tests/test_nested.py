"""The nested runs' skip check (deploy/tests/nested.py), on pytest's own -rs output."""

from __future__ import annotations

import nested  # deploy/tests/nested.py

COMPOSE_OUTPUT = """\
........s.....s.s
SKIPPED [1] platform_tests/test_access.py:141: no operator in this deployment
SKIPPED [1] platform_tests/test_gateway.py:174: this deployment's clusters serve no dashboard
SKIPPED [2] platform_tests/test_gateway.py:232: this deployment has no inner gateway ports on the users' machine
SKIPPED [1] platform_tests/test_gateway.py:451: this deployment's clusters have no dashboard ports on the users' machine
61 passed, 5 skipped in 300.12s (0:05:00)
"""


def test_the_expected_skips_pass() -> None:
    assert nested.unexpected_skips(COMPOSE_OUTPUT, "compose") == []
    nested.check_run(COMPOSE_OUTPUT, 0, "compose")


def test_a_module_skipped_because_the_description_lost_a_key_fails() -> None:
    lost = COMPOSE_OUTPUT.replace(
        "61 passed", "SKIPPED [9] platform_tests/test_metrics.py:20: the description has no metrics\n52 passed"
    )
    assert nested.unexpected_skips(lost, "compose") == [
        "unexpected skip in platform_tests/test_metrics.py: the description has no metrics"
    ]


def test_a_coloured_report_is_read_too() -> None:
    coloured = COMPOSE_OUTPUT.replace("SKIPPED", "\x1b[33mSKIPPED\x1b[0m").replace("61 passed", "\x1b[32m61 passed")
    nested.check_run(coloured, 0, "compose")
    assert nested.skips(coloured) == nested.skips(COMPOSE_OUTPUT) != set()


def test_an_expected_skip_that_stopped_happening_is_named() -> None:
    fixed = "\n".join(line for line in COMPOSE_OUTPUT.splitlines() if "no operator" not in line)
    assert nested.unexpected_skips(fixed, "compose") == [
        "expected skip did not happen (stale list?): platform_tests/test_access.py: no operator in this deployment"
    ]


def test_a_run_with_a_failure_or_no_test_fails() -> None:
    for output, code in ((COMPOSE_OUTPUT.replace("61 passed", "1 failed, 60 passed"), 1), ("no tests ran", 5)):
        try:
            nested.check_run(output, code, "compose")
        except AssertionError:
            continue
        raise AssertionError(f"accepted: {output!r}")


def test_every_target_has_its_suite_and_list() -> None:
    assert set(nested.EXPECTED_SKIPS) == {"compose", "helm-local", "helm-oidc"}
    assert "platform_tests/test_notebooks.py" not in nested.COMPOSE_SUITE  # the notebooks run once, embedded
    assert nested.KERNEL_SMOKE in nested.COMPOSE_SUITE
