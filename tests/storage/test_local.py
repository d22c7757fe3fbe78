"""LocalStorage's listing: every stored file with its modified time, and the leftovers of a
crashed `put` as partials, which `discard` removes; nothing in the folder that is not ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ref2video.errors import NotFound
from ref2video.storage.base import StoredObject
from ref2video.storage.local import LocalStorage
from tests.storage.crash import put_killed_before_rename


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "results")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    return path


def test_the_listing_names_each_stored_file_with_its_modified_time(storage: LocalStorage, source: Path) -> None:
    storage.put("a.mp4", source)
    storage.put("b.mp4", source)
    os.utime(storage.root / "a.mp4", (1_000_000, 1_000_000))
    listed = sorted(storage.listing(), key=lambda item: item.name)
    assert listed[0] == StoredObject("a.mp4", 1_000_000.0, partial=False)
    assert listed[1].name == "b.mp4" and listed[1].modified == (storage.root / "b.mp4").stat().st_mtime
    assert len(listed) == 2  # a finished put leaves no partial behind
    storage.discard(listed[0])
    assert not storage.exists("a.mp4") and storage.exists("b.mp4")
    storage.discard(listed[0])  # already gone: no error


def test_a_put_killed_before_its_rename_leaves_a_partial_the_listing_reports(
    storage: LocalStorage, source: Path
) -> None:
    put_killed_before_rename(storage.root, "cut.mp4", source)
    assert not storage.exists("cut.mp4")
    (item,) = storage.listing()
    assert item.partial and item.name != "cut.mp4"
    assert (storage.root / item.name).read_bytes() == source.read_bytes()  # written, never renamed
    storage.discard(item)
    assert not list(storage.root.iterdir())


def test_a_key_that_ends_in_partial_is_a_complete_file_not_a_leftover(storage: LocalStorage, source: Path) -> None:
    # An upload named `notes.partial` is stored under a blob name with that suffix.
    storage.put("0123abcd.partial", source)
    mtime = (storage.root / "0123abcd.partial").stat().st_mtime
    assert list(storage.listing()) == [StoredObject("0123abcd.partial", mtime)]


def test_what_is_not_ours_is_never_listed(storage: LocalStorage, source: Path) -> None:
    storage.put("ours.mp4", source)
    (storage.root / "sub").mkdir()
    (storage.root / ".hidden").write_bytes(b"x")
    (storage.root / "link.mp4").symlink_to(source)
    assert [item.name for item in storage.listing()] == ["ours.mp4"]


def test_discard_refuses_a_partial_name_that_is_not_ours(storage: LocalStorage) -> None:
    with pytest.raises(NotFound):
        storage.discard(StoredObject("../escape.partial", 0.0, partial=True))
