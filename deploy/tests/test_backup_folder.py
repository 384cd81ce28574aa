"""`cubelab backup --to DIR` writes as root: never into a folder another account could change (issue 25)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cubelab.backup.repository import BackupError, FolderRepository, refuse_shared_folder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the rule is for backups written as root")


def test_a_private_folder_and_one_under_a_sticky_shared_folder_are_fine(tmp_path: Path) -> None:
    refuse_shared_folder(tmp_path / "new" / "backups")  # made later, 0700
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    refuse_shared_folder(sticky / "mine")
    (sticky / "mine").mkdir(mode=0o700)
    refuse_shared_folder(sticky / "mine")


def test_a_folder_others_may_write_to_is_refused_with_nothing_written(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for target in (shared, shared / "below"):
        with pytest.raises(BackupError, match="can be written by other accounts"):
            FolderRepository(target).create()
    assert list(shared.iterdir()) == []


def test_a_link_inside_the_folder_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / "x").symlink_to("/etc")
    with pytest.raises(BackupError, match="is a link"):
        refuse_shared_folder(repo)


def test_another_accounts_folder_or_link_on_the_way_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(BackupError, match="belongs to another account"):
        refuse_shared_folder(theirs / "backups")
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    os.lchown(link, 4242, 4242)
    with pytest.raises(BackupError, match="belongs to another account"):
        refuse_shared_folder(link)
    planted = tmp_path / "repo"
    planted.mkdir(mode=0o700)
    (planted / "file").write_text("x")
    os.chown(planted / "file", 4242, 4242)
    with pytest.raises(BackupError, match="another account's file"):
        refuse_shared_folder(planted)
