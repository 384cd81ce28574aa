"""cubelab.hub.tbsync's copying logic (the real copy to S3, from a real kernel's Keras callback, is
platform_tests/test_hub.py): new and grown files are copied under PREFIX/USER/, unchanged ones are not, and what
the bucket already holds is not copied again after a restart."""

from __future__ import annotations

from pathlib import Path

from cubelab.hub.tbsync import Syncer, local_logdir


def test_new_and_grown_files_are_copied_once_each(tmp_path: Path) -> None:
    sent: list[tuple[str, bytes]] = []
    syncer = Syncer(tmp_path, "tensorboard/", "alice", lambda path, key: sent.append((key, path.read_bytes())))
    (tmp_path / "run1").mkdir()
    events = tmp_path / "run1" / "events.out.tfevents.1.host"
    events.write_bytes(b"a")
    assert syncer.once() == ["tensorboard/alice/run1/events.out.tfevents.1.host"]
    assert syncer.once() == []  # unchanged
    with events.open("ab") as f:
        f.write(b"bc")  # event files grow
    assert syncer.once() == ["tensorboard/alice/run1/events.out.tfevents.1.host"]
    assert sent[-1] == ("tensorboard/alice/run1/events.out.tfevents.1.host", b"abc")


def test_what_the_bucket_holds_is_not_copied_again(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"12345")
    (tmp_path / "new").write_bytes(b"1")
    sent: list[str] = []
    syncer = Syncer(tmp_path, "tb", "bob", lambda _p, key: sent.append(key), known={"tb/bob/old": 5, "tb/bob/new": 9})
    assert syncer.once() == ["tb/bob/new"] and sent == ["tb/bob/new"]  # a size that differs is copied


def test_a_failed_copy_is_tried_again(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    calls = []

    def flaky(_path: Path, key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise OSError("storage away")

    syncer = Syncer(tmp_path, "tb", "carol", flaky)
    try:
        syncer.once()
    except OSError:
        pass
    assert syncer.once() == ["tb/carol/f"] and len(calls) == 2


def test_a_relative_logdir_is_under_home(tmp_path: Path) -> None:
    home = str(tmp_path)
    assert local_logdir({"TENSORBOARD_LOGDIR": "tensorboard/ocean", "HOME": home}) == tmp_path / "tensorboard/ocean"
    assert local_logdir({"TENSORBOARD_LOGDIR": "/data/tb", "HOME": home}) == Path("/data/tb")
    assert local_logdir({"HOME": home}) == tmp_path / "tensorboard"
