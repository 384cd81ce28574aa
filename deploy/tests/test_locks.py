"""The environments' lock files (cubelab.locks): current with their inputs, consistent with the shared pins, and
used only where they fit. That `cubelab up` installs from them is every stack test's first step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cubelab import install, locks


def test_every_lock_is_current_with_its_environment_file() -> None:
    stale = locks.stale()
    assert stale == [], f"stale lock files {stale}: run `.venv/bin/python -m cubelab.locks` and commit them"
    assert {p.stem for p in locks.LOCK_DIR.glob("*.txt")} == {e.name for e in locks.environments()}


def test_a_changed_input_makes_its_lock_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    real = locks.environments()

    def changed() -> list[locks.Environment]:
        return [locks.Environment(e.name, e.requirements + "rich\n", e.source) if e.name == "kernel-sklearn" else e
                for e in real]  # fmt: skip

    monkeypatch.setattr(locks, "environments", changed)
    assert locks.stale() == ["kernel-sklearn"]
    sklearn = next(e for e in changed() if e.name == "kernel-sklearn")
    assert locks.lock_for("kernel-sklearn", "3.11.7 (main)", sklearn.requirements) is None  # `up` uses pip
    services = next(e for e in real if e.name == "services")
    assert locks.lock_for("services", "3.11.7 (main)", services.requirements) == locks.LOCK_DIR / "services.txt"


def pins(lock: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M))


def test_locks_hold_the_shared_pins_and_each_environments_own() -> None:
    shared = pins(locks.CONSTRAINTS)
    for env in locks.environments():
        locked = {k.lower().replace("_", "-"): v for k, v in pins(env.lock).items()}
        for name, version in shared.items():
            if name.lower() in locked:
                assert locked[name.lower()] == version, (env.name, name)
        for name, version in pins_of(env.requirements).items():
            assert locked.get(name.lower().replace("_", "-")) == version, (env.name, name, version)
        # Every package with a hash: uv checks what it installs.
        assert all("--hash=sha256:" in block for block in env.lock.read_text().split("\n", 3)[3].split("==")[1:])
    assert pins(locks.LOCK_DIR / "kernel-pytorch.txt")["torch"] == "2.13.0+cpu"  # never a CUDA build here


def pins_of(requirements: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", requirements, re.M))


def test_locks_are_used_only_where_they_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = next(e for e in locks.environments() if e.name == "hub").requirements
    assert locks.lock_for("hub", "3.11.2 (main, Mar 2023)", hub) == locks.LOCK_DIR / "hub.txt"
    assert locks.lock_for("hub", "3.12.1 (main)", hub) is None  # another Python: pip from the environment file
    assert locks.lock_for("no-such-env", "3.11.2", hub) is None
    monkeypatch.setenv("CUBELAB_INSTALLER", "pip")
    assert locks.lock_for("hub", "3.11.2", hub) is None
    monkeypatch.setenv("CUBELAB_INSTALLER", "auto")
    monkeypatch.setattr(locks, "uv_binary", lambda: None)
    assert locks.lock_for("hub", "3.11.2", hub) is None


def test_the_installer_and_the_locks_read_the_same_kernel_files() -> None:
    assert [f"kernel-{p.parent.name}" for p in install.kernel_specs()] == [
        e.name for e in locks.environments() if e.name.startswith("kernel-")]  # fmt: skip


def test_pip_sources_become_uv_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", f"{wheels} {tmp_path / 'missing'}")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://mirror.example.org/simple")
    args = locks.pip_sources()
    assert ["--find-links", str(wheels)] == args[args.index(str(wheels)) - 1 : args.index(str(wheels)) + 1]
    assert str(tmp_path / "missing") not in args  # pip only warns about a missing folder; uv would stop
    assert "https://mirror.example.org/simple" in args and "unsafe-best-match" in args
