"""The prerequisite table: each program names its package and the tests that need it, and a missing one is
reported with both (pure logic; the install itself runs in `make test` before any test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cubelab import prereqs

ROOT = Path(__file__).resolve().parents[2]


def test_every_requirement_names_real_test_files() -> None:
    for requirement in prereqs.TEST_REQUIREMENTS:
        assert requirement.tests, requirement
        for test in requirement.tests:
            assert (ROOT / test).is_file(), f"{requirement.program} names {test}, which does not exist"


def test_netavark_firewall_and_compose_helpers_are_required() -> None:
    # The fresh-machine failure of issue 10: netavark calls iptables, which nothing installed.
    programs = {r.program: r for r in prereqs.TEST_REQUIREMENTS}
    for program in ("podman", "runc", "conmon", "debootstrap", "netavark", "iptables", "aardvark-dns", "catatonit"):
        assert program in programs, program
    assert "deploy/tests/test_compose_run.py" in programs["iptables"].tests


def test_a_missing_program_is_reported_with_its_package_and_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(prereqs.shutil, "which", lambda name: None if name == "iptables" else real_which(name))
    missing = prereqs.missing_requirements()
    assert "iptables" in [r.program for r in missing]
    report = prereqs.describe_missing([r for r in missing if r.program == "iptables"])
    assert "iptables (Debian package iptables)" in report
    assert "deploy/tests/test_images.py" in report and "deploy/tests/test_compose_run.py" in report


def test_podman_helpers_are_found_in_podmans_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    helper = prereqs.Requirement("netavark", "netavark", "x", ("t",), podman_helper=True)
    monkeypatch.setattr(prereqs, "PODMAN_HELPER_DIRS", (str(tmp_path),))
    assert not helper.present()
    (tmp_path / "netavark").write_text("")
    assert helper.present()


def test_missing_packages_for_tests_lists_test_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs, "missing_requirements", lambda: [prereqs.TEST_REQUIREMENTS[0]])
    assert prereqs.TEST_REQUIREMENTS[0].package in prereqs.missing_packages(for_tests=True)
    assert prereqs.TEST_REQUIREMENTS[0].package not in prereqs.missing_packages(for_tests=False)


def test_make_up_as_root_needs_iptables(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(prereqs.shutil, "which", lambda name: None if name == "iptables" else real_which(name))
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 0)
    assert "iptables" in prereqs.missing_packages()
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 1000)
    assert "iptables" not in prereqs.missing_packages()
