"""The demo set: files, ground truth, and that each class really sounds and looks like itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.media import decode
from pipeline.datasets.demo_videos import CLASSES, DemoConfig, _plan, main, write_demo
from pipeline.media.segment import Segment, SegmentConfig, segment_clip

# Where each class's sound puts its strongest frequency (Hz), from the recipe in pipeline.datasets.demo_videos.
PEAK_HZ = {"bell": (830, 930), "engine": (84, 96), "bird": (2300, 4300), "drum": (50, 70), "siren": (560, 1270)}
COLOURS = {"bell": (230, 210, 30), "engine": (220, 30, 30), "bird": (40, 80, 230), "drum": (40, 200, 60), "siren": (220, 40, 220)}


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def _colour_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(image.astype(int) - colour).max(axis=-1) < 45).sum())


def test_files_match_labels(demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    files = sorted(p.relative_to(demo_dir).as_posix() for p in demo_dir.rglob("*.mp4"))
    assert files == sorted(demo_labels["path"])
    for row in demo_labels.itertuples():
        assert row.path.split("/")[0] == row.label  # folder per class
        assert 0 <= row.start < row.end <= 10.0
    assert set(demo_labels["label"]) == set(CLASSES)
    assert {"single", "two_event", "spurious"} <= set(demo_labels["kind"])


def test_streams_and_codecs(demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    import av

    with av.open(str(demo_dir / demo_labels["path"][0])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert (video.codec_context.width, video.codec_context.height) == (160, 120)
        assert audio.sample_rate == 22050
        assert container.duration / av.time_base == pytest.approx(10.0, abs=0.05)


def test_kinds_and_splits_over_many_clips() -> None:
    rows = pd.DataFrame([_plan(i, DemoConfig()) [0] for i in range(400)])
    fractions = rows["kind"].value_counts(normalize=True)
    assert fractions["two_event"] == pytest.approx(0.15, abs=0.05)
    assert fractions["spurious"] == pytest.approx(0.15, abs=0.05)
    spurious = rows[rows["kind"] == "spurious"]
    assert (spurious["audio_label"] != spurious["label"]).all()
    two = rows[rows["kind"] == "two_event"]
    assert ((two["second_end"] <= two["start"]) | (two["second_start"] >= two["end"])).all()  # disjoint
    assert (two["second_label"] != two["label"]).all()
    split = rows.groupby("label")["split"].value_counts(normalize=True).unstack()
    assert split["test"].between(0.28, 0.38).all() and split["val"].between(0.17, 0.27).all()
    # the demo's 180 clips: 80 train, 40 val, 60 test, the same per class
    demo = pd.DataFrame([_plan(i, DemoConfig())[0] for i in range(180)])
    assert demo["split"].value_counts().to_dict() == {"train": 80, "test": 60, "val": 40}
    assert (demo.groupby("label")["split"].value_counts().unstack() == [12, 16, 8]).all().all()


def test_the_smallest_demo_the_flow_accepts_has_every_split_of_every_class() -> None:
    from flows.demo import MIN_DEMO_CLIPS

    def splits_per_class(clips: int) -> set[frozenset[str]]:
        rows = pd.DataFrame([_plan(i, DemoConfig())[0] for i in range(clips)])
        return {frozenset(group) for group in rows.groupby("label")["split"].agg(set)}

    assert splits_per_class(MIN_DEMO_CLIPS) == {frozenset({"train", "val", "test"})}
    assert splits_per_class(MIN_DEMO_CLIPS - len(CLASSES)) != {frozenset({"train", "val", "test"})}  # one fewer per class


def test_event_sound_has_its_class_pitch(demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    for row in demo_labels.itertuples():
        audio, _ = decode.decode_audio(demo_dir / row.path, row.start + 0.1, row.end - 0.1, 16000)
        low, high = PEAK_HZ[row.audio_label]
        assert low <= _peak_hz(audio, 16000) <= high, (row.path, row.audio_label)


def test_picture_shows_class_only_during_events(demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    config = SegmentConfig(frame_size=None, decoder="pyav")
    for row in demo_labels.itertuples():
        segment = segment_clip(demo_dir / row.path, row.path, 0.0, 10.0, config)
        assert isinstance(segment, Segment)
        for image, t in zip(segment.frames, segment.frame_times):
            inside = row.start + 0.1 < t < row.end - 0.1
            second = row.kind == "two_event" and row.second_start - 0.1 <= t <= row.second_end + 0.1
            pixels = _colour_pixels(image, COLOURS[row.label])
            if inside:
                assert pixels > 80, (row.path, t)
            elif not second and not (row.start - 0.1 <= t <= row.end + 0.1):
                assert pixels < 10, (row.path, t)


def test_deterministic_and_resumable(tmp_path: Path) -> None:
    config = DemoConfig(seed=3, seconds=2.0)
    first = write_demo(tmp_path / "a", 3, config=config, workers=1)
    second = write_demo(tmp_path / "b", 3, config=config, workers=2)
    pd.testing.assert_frame_equal(first, second)
    for path in first["path"]:
        a, b = (tmp_path / d / path for d in "ab")
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    kept = tmp_path / "a" / first["path"][0]
    stamp = kept.stat().st_mtime_ns
    write_demo(tmp_path / "a", 4, config=config, workers=1)
    assert kept.stat().st_mtime_ns == stamp  # not rewritten
    assert len(list((tmp_path / "a").rglob("*.mp4"))) == 4
    other = write_demo(tmp_path / "c", 3, config=DemoConfig(seed=4, seconds=2.0), workers=1)
    assert not other[["start", "end"]].equals(first[["start", "end"]])


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path), "--clips", "2", "--seconds", "2", "--workers", "1"])
    assert "wrote 2 clips" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 2
