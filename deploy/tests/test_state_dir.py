"""The state directory: cubelab changes the mode only of a folder it created, and refuses a non-empty folder
that is not its own (pure file-system logic, in a temporary folder)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cubelab.backends.local.paths import StateDirError, StatePaths


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_state_dir_is_created_traversable_only(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.create()
    assert mode(paths.root) == 0o711 and mode(paths.secrets) == 0o700
    paths.create()  # again: still ours
    assert paths.marker.read_text().strip() == "created"


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    os.chmod(given, 0o1777)  # noqa: S103 - like /tmp: world-writable with the sticky bit
    StatePaths(given).create()
    assert mode(given) == 0o1777
    StatePaths(given).create()
    assert mode(given) == 0o1777


def test_a_non_empty_folder_that_is_not_cubelabs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "someone-elses.txt").write_text("x")
    os.chmod(tmp_path, 0o755)  # noqa: S103 - a mode that must survive
    with pytest.raises(StateDirError, match="not made by cubelab"):
        StatePaths(tmp_path).create()
    assert mode(tmp_path) == 0o755 and sorted(p.name for p in tmp_path.iterdir()) == ["someone-elses.txt"]


def test_a_state_dir_holding_only_cubelabs_own_folders_is_adopted(tmp_path: Path) -> None:
    """`make test` before `make up` leaves .cubelab/install and .cubelab/scratch (no marker): still cubelab's."""
    root = tmp_path / ".cubelab"
    (root / "install").mkdir(parents=True)
    (root / "scratch").mkdir()
    StatePaths(root).create()
    assert StatePaths(root).marker.read_text().strip() == "created" and mode(root) == 0o711
