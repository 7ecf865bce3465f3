"""Acquisition from local files, folders and zip archives, and the availability table."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.media.acquire import (
    AVAILABILITY_FILE, AcquireConfig, acquire, availability_failures, available_sources, content_path, safe_member,
    source_locations, write_availability,
)
from pipeline.datasets.folder import SplitConfig, build_folder_manifest
from pipeline.datasets.schema import OUTSIDE_ROOT_ATTR, ROOT_ATTR, read_manifest, write_build


def _rows(sources: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Manifest-shaped rows from (clip_id, source_kind, source)."""
    return pd.DataFrame({
        "clip_id": [c for c, _, _ in sources], "source_kind": [k for _, k, _ in sources],
        "source": [s for _, _, s in sources], "clip_start_s": 0.0, "clip_end_s": math.nan,
    })


@pytest.fixture()
def ave_like(tmp_path: Path, demo_dir: Path, demo_labels: pd.DataFrame) -> tuple[Path, Path, list[str]]:
    """An AVE-shaped archive: ``AVE_Dataset/AVE/<id>.mp4`` as a zip and as an unpacked folder."""
    ids = ["vidA", "vidB", "vidC"]
    folder = tmp_path / "unpacked"
    (folder / "AVE_Dataset" / "AVE").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "AVE_Dataset.zip", "w") as bundle:
        for vid, rel in zip(ids, demo_labels["path"]):
            data = (demo_dir / rel).read_bytes()
            bundle.writestr(f"AVE_Dataset/AVE/{vid}.mp4", data)
            (folder / "AVE_Dataset" / "AVE" / f"{vid}.mp4").write_bytes(data)
    return tmp_path / "AVE_Dataset.zip", folder, ids


def test_zip_extracts_only_needed_members(tmp_path: Path, ave_like: tuple[Path, Path, list[str]]) -> None:
    archive, _, ids = ave_like
    manifest = _rows([("a1", "archive", "AVE_Dataset/AVE/vidA.mp4"), ("a2", "archive", "AVE_Dataset/AVE/vidA.mp4"),
                      ("b", "archive", "AVE_Dataset/AVE/vidB.mp4"), ("x", "archive", "AVE_Dataset/AVE/nope.mp4")])
    cache = tmp_path / "cache"
    table = acquire(manifest, AcquireConfig(cache_dir=cache, archive=archive))
    assert list(table["clip_id"]) == ["a1", "a2", "b", "x"]
    assert list(table["outcome"]) == ["present", "present", "present", "missing"]
    extracted = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.mp4"))
    assert extracted == ["AVE_Dataset/AVE_Dataset/AVE/vidA.mp4", "AVE_Dataset/AVE_Dataset/AVE/vidB.mp4"]  # not vidC
    with zipfile.ZipFile(archive) as bundle:
        assert Path(table["path"][2]).read_bytes() == bundle.read("AVE_Dataset/AVE/vidB.mp4")
    paths, offsets = available_sources(table)
    assert set(paths) == {"a1", "a2", "b"} and offsets == {"a1": 0.0, "a2": 0.0, "b": 0.0}
    [failure] = availability_failures(table)
    assert (failure.clip_id, failure.stage, failure.kind) == ("x", "acquire", "missing")
    assert "nope.mp4" in failure.message
    saved = pd.read_parquet(cache / AVAILABILITY_FILE)
    pd.testing.assert_frame_equal(saved, table)
    stamp = Path(table["path"][0]).stat().st_mtime_ns
    acquire(manifest, AcquireConfig(cache_dir=cache, archive=archive))
    assert Path(table["path"][0]).stat().st_mtime_ns == stamp  # not extracted twice


def test_folder_archive_is_read_in_place(tmp_path: Path, ave_like: tuple[Path, Path, list[str]]) -> None:
    _, folder, _ = ave_like
    manifest = _rows([("c", "archive", "AVE_Dataset/AVE/vidC.mp4"), ("d", "archive", "AVE_Dataset/AVE/vidD.mp4")])
    table = acquire(manifest, AcquireConfig(cache_dir=tmp_path / "cache", archive=folder))
    assert table["path"][0] == str(folder / "AVE_Dataset/AVE/vidC.mp4")
    assert list(table["outcome"]) == ["present", "missing"]
    assert not list((tmp_path / "cache").rglob("*.mp4"))  # nothing copied


def test_file_sources_absolute_and_relative(tmp_path: Path, demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    rel = demo_labels["path"][0]
    manifest = _rows([("abs", "file", str(demo_dir / rel)), ("rel", "file", rel), ("no", "file", "drum/none.mp4")])
    table = acquire(manifest, AcquireConfig(cache_dir=tmp_path, root=demo_dir))
    assert list(table["outcome"]) == ["present", "present", "missing"]
    assert table["path"][1] == str(demo_dir / rel)


def test_archive_without_config_is_missing(tmp_path: Path) -> None:
    table = acquire(_rows([("a", "archive", "x/y.mp4")]), AcquireConfig(cache_dir=tmp_path))
    assert table["outcome"][0] == "missing" and "AcquireConfig.archive" in table["message"][0]


@pytest.mark.parametrize("member", ["../evil.mp4", "/etc/passwd", "a/../../b.mp4", "C:\\x.mp4", "..\\x.mp4", ""])
def test_unsafe_members_are_rejected(tmp_path: Path, member: str) -> None:
    with pytest.raises(ValueError, match="must be a relative path"):
        safe_member(member, "manifest row 'k'")
    with pytest.raises(ValueError, match="manifest row 'k'"):
        acquire(_rows([("k", "archive", member or "..")]), AcquireConfig(cache_dir=tmp_path, archive=tmp_path))


def test_write_availability_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame({"clip_id": ["a"], "outcome": ["present"]})
    pd.testing.assert_frame_equal(pd.read_csv(write_availability(frame, tmp_path / "t.csv")), frame)


def test_folder_archive_symlink_out_is_not_read(tmp_path: Path, ave_like: tuple[Path, Path, list[str]]) -> None:
    _, folder, _ = ave_like
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    (folder / "AVE_Dataset" / "AVE" / "link.mp4").symlink_to(secret)
    manifest = _rows([("l", "archive", "AVE_Dataset/AVE/link.mp4"), ("c", "archive", "AVE_Dataset/AVE/vidC.mp4")])
    config = AcquireConfig(cache_dir=tmp_path / "cache", archive=folder)
    table = acquire(manifest, config)
    assert list(table["outcome"]) == ["outside_root", "present"] and table["path"][0] == ""
    assert "outside the archive folder" in table["message"][0] and str(secret) in table["message"][0]
    rows = list(manifest.itertuples(index=False))
    assert content_path(rows[0], config) is None  # the link's target is not hashed either
    assert content_path(rows[1], config) == (folder / "AVE_Dataset/AVE/vidC.mp4", None)


def test_source_locations_follow_a_file_swapped_for_a_symlink(tmp_path: Path,
                                                             ave_like: tuple[Path, Path, list[str]]) -> None:
    """The keys of a cached acquisition: where each source resolves now, so a swap is acquired (and refused) again."""
    _, folder, _ = ave_like
    root = folder / "AVE_Dataset" / "AVE"
    manifest = _rows([("a", "file", "vidA.mp4"), ("l", "archive", "AVE_Dataset/AVE/link.mp4"),
                      ("c", "archive", "AVE_Dataset/AVE/vidC.mp4"), ("y", "youtube", "abc")])
    config = AcquireConfig(cache_dir=tmp_path / "cache", root=root, archive=folder)
    (root / "link.mp4").symlink_to(tmp_path / "elsewhere.mp4")  # a member leaving its folder: never read
    before = [str(root / "vidA.mp4"), "", str(root / "vidC.mp4"), ""]
    assert source_locations(manifest, config) == before
    outside = tmp_path / "vidA.mp4"
    (root / "vidA.mp4").rename(outside)  # moved out, a symlink to it in its place: the same bytes
    (root / "vidA.mp4").symlink_to(outside)
    assert source_locations(manifest, config) == [str(outside), *before[1:]]
    assert acquire(manifest.iloc[[0]], config)["outcome"].tolist() == ["outside_root"]


def test_file_outside_root_needs_the_recorded_opt_in(tmp_path: Path, demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    """A hand-made manifest cannot read /etc/hostname (or escape by a symlink) unless built with the opt-in."""
    outside = Path("/etc/hostname")
    if not outside.is_file():
        pytest.skip("no /etc/hostname here")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.mp4").symlink_to(outside)
    manifest = _rows([("abs", "file", str(outside)), ("link", "file", "link.mp4")])
    manifest.attrs[ROOT_ATTR] = str(root)
    table = acquire(manifest, AcquireConfig(cache_dir=tmp_path / "c1"))
    assert list(table["outcome"]) == ["outside_root", "outside_root"]
    assert "outside the dataset root" in table["message"][0] and "--allow-outside-root" in table["message"][0]
    no_root = acquire(_rows([("abs", "file", str(outside)), ("rel", "file", "x.mp4")]), AcquireConfig(cache_dir=tmp_path / "c2"))
    assert list(no_root["outcome"]) == ["outside_root", "outside_root"] and "no dataset root" in no_root["message"][1]
    manifest.attrs[OUTSIDE_ROOT_ATTR] = True  # what a builder given --allow-outside-root records
    allowed = acquire(manifest, AcquireConfig(cache_dir=tmp_path / "c3"))
    assert list(allowed["outcome"]) == ["present", "present"] and allowed["path"][0] == str(outside)


def test_builder_records_the_opt_in(tmp_path: Path) -> None:
    """``--allow-outside-root`` reaches the saved manifest, and acquisition then reads the outside file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (elsewhere / name).write_bytes(name.encode())
    data = tmp_path / "data"
    data.mkdir()
    csv = data / "labels.csv"
    csv.write_text(f"path,label,split\n{elsewhere / 'a.mp4'},cat,train\n{elsewhere / 'b.mp4'},cat,test\n")
    built = build_folder_manifest(csv, splitting=SplitConfig(val_fraction=0.0), allow_outside_root=True)
    manifest, _ = write_build(built, tmp_path / "m.parquet")
    frame = read_manifest(manifest)
    assert frame.attrs[OUTSIDE_ROOT_ATTR] is True
    assert list(acquire(frame, AcquireConfig(cache_dir=tmp_path / "c"))["outcome"]) == ["present", "present"]
    frame.attrs.pop(OUTSIDE_ROOT_ATTR)
    assert set(acquire(frame, AcquireConfig(cache_dir=tmp_path / "c"))["outcome"]) == {"outside_root"}
