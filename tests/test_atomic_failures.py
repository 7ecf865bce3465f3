"""Atomic writes leave either the old file or the new one; failure records round-trip."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.io.atomic import atomic_path
from pipeline.features.failures import Failure, read_failures, write_failures


def test_interrupted_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_finished_file_has_the_umask_mode_not_owner_only(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(tmp_path / "f.bin") as tmp:
        tmp.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask


def test_failures_round_trip_including_empty(tmp_path):
    rows = [Failure("a_1", "segment", "silent", "RMS 1.2e-06 below 1e-04"), Failure("b", "acquire", "private", "Private video")]
    assert read_failures(write_failures(tmp_path / "f.parquet", rows)) == rows
    assert read_failures(write_failures(tmp_path / "empty.parquet", [])) == []
