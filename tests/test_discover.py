from pathlib import Path

import pytest

from cliptool.media.discover import discover_videos
from cliptool.errors import UsageError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_finds_videos_recursively_by_extension_and_skips_hidden(tmp_path: Path) -> None:
    wanted = [touch(tmp_path / "a.mp4"), touch(tmp_path / "sub" / "b.MKV"), touch(tmp_path / "sub" / "deep" / "c.m2ts")]
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.mp4")
    touch(tmp_path / ".cache" / "d.mp4")
    found = list(discover_videos([tmp_path]))
    assert sorted(found) == sorted(wanted)


def test_symlink_loops_are_followed_once(tmp_path: Path) -> None:
    touch(tmp_path / "x" / "v.webm")
    (tmp_path / "x" / "loop").symlink_to(tmp_path / "x")
    (tmp_path / "alias").symlink_to(tmp_path / "x")
    assert [p.name for p in discover_videos([tmp_path])] == ["v.webm"]


def test_a_file_given_twice_is_listed_once(tmp_path: Path) -> None:
    f = touch(tmp_path / "v.mov")
    assert list(discover_videos([f, tmp_path, f])) == [f]


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or folder"):
        list(discover_videos([tmp_path / "nope"]))
