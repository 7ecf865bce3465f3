"""Segmentation: audio against a numpy reference, frames picked by timestamp, checks as failure records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.media import decode
from pipeline.datasets.demo_videos import write_video
from pipeline.features.failures import Failure
from pipeline.media.segment import (
    Segment, SegmentConfig, load_segment, save_segment, segment_clip, segment_manifest, segment_path,
)

DECODERS = ["decord", "pyav"]
STEP = 8  # grey level per frame index: frame i is filled with i * STEP


def _tone(seconds: float, rate: int = 44100, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def _indexed_frames(count: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    return np.repeat((np.arange(count, dtype=np.uint8) * STEP)[:, None, None, None], 3, axis=3) * np.ones(
        (1, *size, 1), dtype=np.uint8)


def _which_frames(frames: np.ndarray) -> list[int]:
    """Recover each frame's index from its grey level (within codec tolerance)."""
    return [int(round(float(f[..., 0].mean()) / STEP)) for f in frames]


@pytest.fixture(scope="module")
def indexed_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s at 5 fps (frame i grey level 8 i) with a 440 Hz tone at 0.5 amplitude, 44.1 kHz."""
    path = tmp_path_factory.mktemp("media") / "indexed.mp4"
    return write_video(path, frames=_indexed_frames(30), fps=5, audio=_tone(6.0), sample_rate=44100)


def test_audio_matches_reference_sine(indexed_clip: Path) -> None:
    segment = segment_clip(indexed_clip, "c", 1.0, 4.0, SegmentConfig())
    assert isinstance(segment, Segment)
    assert segment.audio.dtype == np.float32 and segment.audio.shape == (48000,)
    # least-squares fit of a 440 Hz sinusoid at 16 kHz: amplitude, and the residual is tiny
    t = 1.0 + np.arange(48000) / 16000
    basis = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 440 * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, segment.audio, rcond=None)
    assert np.hypot(*coef) == pytest.approx(0.5, rel=0.02)
    assert math.atan2(coef[1], coef[0]) == pytest.approx(0.0, abs=0.1)  # sample k is at start + k / 16 kHz
    residual = segment.audio - basis @ coef
    assert np.sqrt(np.mean(residual**2)) < 0.01
    spectrum = np.abs(np.fft.rfft(segment.audio))
    assert np.fft.rfftfreq(48000, 1 / 16000)[np.argmax(spectrum)] == pytest.approx(440, abs=1)


def test_audio_onset_lands_on_time(tmp_path: Path) -> None:
    audio = _tone(6.0, rate=22050) * (np.arange(6 * 22050) >= 2.5 * 22050)
    path = write_video(tmp_path / "onset.mp4", frames=_indexed_frames(30), fps=5, audio=audio, sample_rate=22050)
    segment = segment_clip(path, "c", 1.0, 5.0, SegmentConfig())
    onset = np.argmax(np.abs(segment.audio) > 0.1) / 16000
    assert onset == pytest.approx(1.5, abs=0.005)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(("start", "end", "fps", "expected"), [
    (0.0, 6.0, 1.0, [2, 7, 12, 17, 22, 27]),          # t = k + 0.5 at 5 fps -> frame 5k + 2
    (1.3, 4.3, 1.0, [9, 14, 19]),                     # 1.8, 2.8, 3.8 s
    (0.0, 3.0, 2.0, [1, 3, 6, 8, 11, 13]),            # 0.25, 0.75, ... s
    (2.0, math.nan, 1.0, [12, 17, 22, 27]),           # to the end
])
def test_frames_are_the_right_ones(indexed_clip: Path, decoder: str, start: float, end: float,
                                   fps: float, expected: list[int]) -> None:
    segment = segment_clip(indexed_clip, "c", start, end, SegmentConfig(decoder=decoder, fps=fps, frame_size=(64, 80)))
    assert isinstance(segment, Segment)
    assert segment.frames.shape == (len(expected), 64, 80, 3) and segment.frames.dtype == np.uint8
    assert _which_frames(segment.frames) == expected
    np.testing.assert_allclose(segment.frame_times, (np.arange(len(expected)) + 0.5) / fps)


@pytest.mark.parametrize("decoder", DECODERS)
def test_variable_frame_rate_picks_by_timestamp(tmp_path: Path, decoder: str) -> None:
    times = np.round(np.cumsum(np.r_[0.0, np.random.default_rng(1).uniform(0.05, 0.7, 24)]), 3)
    path = write_video(tmp_path / "vfr.mp4", frames=_indexed_frames(25), fps=10, frame_times=times,
                       audio=_tone(times[-1] + 0.5), sample_rate=44100)
    segment = segment_clip(path, "c", 0.0, math.nan, SegmentConfig(decoder=decoder))
    assert isinstance(segment, Segment)
    # by hand: the frame on screen at t is the last one that started at or before t
    expected = [max(i for i, s in enumerate(times) if s <= t) for t in segment.frame_times]
    assert _which_frames(segment.frames) == expected
    assert expected != [int(t * 10) for t in segment.frame_times]  # index-based picking would differ


def test_decoders_agree_on_demo_clip(demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    path = demo_dir / demo_labels["path"][1]
    a = segment_clip(path, "c", 0.5, 9.5, SegmentConfig(decoder="decord"))
    b = segment_clip(path, "c", 0.5, 9.5, SegmentConfig(decoder="pyav"))
    assert a.frames.shape == b.frames.shape == (9, 224, 224, 3)
    assert np.abs(a.frames.astype(int) - b.frames).mean() < 3  # same frames, resized by two libraries
    np.testing.assert_array_equal(a.audio, b.audio)


def _failure(result: Segment | Failure, kind: str) -> Failure:
    assert isinstance(result, Failure), result
    assert (result.kind, result.stage, result.clip_id) == (kind, "segment", "c")
    return result


def test_no_audio_no_video_silent(tmp_path: Path) -> None:
    mute = write_video(tmp_path / "mute.mp4", frames=_indexed_frames(20), fps=5, audio=None)
    _failure(segment_clip(mute, "c", 0, 4, SegmentConfig()), "no_audio")
    blind = write_video(tmp_path / "blind.mp4", frames=None, fps=5, audio=_tone(4.0))
    _failure(segment_clip(blind, "c", 0, 4, SegmentConfig()), "no_video")
    quiet = write_video(tmp_path / "quiet.mp4", frames=_indexed_frames(20), fps=5,
                        audio=_tone(4.0, amplitude=2e-4), sample_rate=44100)
    message = _failure(segment_clip(quiet, "c", 0, 4, SegmentConfig()), "silent").message
    assert "RMS 1.4" in message  # 2e-4 / sqrt(2)
    assert isinstance(segment_clip(quiet, "c", 0, 4, SegmentConfig(silence_rms=1e-4)), Segment)


def test_truncated_and_garbage_files(tmp_path: Path, indexed_clip: Path) -> None:
    data = indexed_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert str(cut) in _failure(segment_clip(cut, "c", 0, 6, SegmentConfig()), "undecodable").message
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    _failure(segment_clip(junk, "c", 0, 6, SegmentConfig()), "undecodable")
    _failure(segment_clip(tmp_path / "absent.mp4", "c", 0, 6, SegmentConfig()), "undecodable")


@pytest.mark.parametrize("decoder", DECODERS)
def test_shorter_than_asked(indexed_clip: Path, decoder: str) -> None:
    config = SegmentConfig(decoder=decoder, min_seconds=2.0)
    segment = segment_clip(indexed_clip, "c", 3.0, 10.0, config)  # the file ends at 6 s
    assert isinstance(segment, Segment)
    assert segment.short_by_s == pytest.approx(4.0, abs=0.1)
    assert len(segment.audio) == pytest.approx(3 * 16000, abs=160)
    assert _which_frames(segment.frames) == [17, 22, 27]
    message = _failure(segment_clip(indexed_clip, "c", 4.5, 10.0, config), "too_short").message
    assert "only 1.50 s there" in message
    whole = segment_clip(indexed_clip, "c", 0.0, 6.0, config)
    assert whole.short_by_s == 0.0


def test_save_load_roundtrip(tmp_path: Path, indexed_clip: Path) -> None:
    segment = segment_clip(indexed_clip, "c", 0.0, 3.0, SegmentConfig())
    path = save_segment(segment, segment_path(tmp_path, "clip-1"))
    again = load_segment(path)
    assert again.clip_id == "c" and again.sample_rate == 16000
    for name in ("audio", "frames", "frame_times"):
        np.testing.assert_array_equal(getattr(again, name), getattr(segment, name))
    assert [p.name for p in tmp_path.iterdir()] == ["clip-1.npz"]  # no temporary left behind


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "", "x y"])
def test_clip_ids_are_validated_before_becoming_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid name"):
        segment_path(tmp_path, bad)


def test_segment_manifest_writes_skips_and_records(tmp_path: Path, demo_dir: Path, demo_labels: pd.DataFrame) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"junk")
    manifest = pd.DataFrame({
        "clip_id": ["a", "b", "bad", "short", "gone"],
        "clip_start_s": [0.0, 12.0, 0.0, 5.0, 0.0],
        "clip_end_s": [math.nan, 14.0, 5.0, 12.0, 5.0],
    })
    clip_a, clip_b = (str(demo_dir / p) for p in demo_labels["path"][:2])
    local = {"a": clip_a, "b": clip_b, "bad": str(junk), "short": clip_a}
    out = tmp_path / "clips"
    # "b" is a ranged download whose file starts at source time 10 s
    paths, failures = segment_manifest(manifest, local, out, local_offsets={"b": 10.0}, workers=2)
    assert paths == [out / "a.npz", out / "b.npz", out / "short.npz"]
    assert [(f.clip_id, f.kind) for f in failures] == [("bad", "undecodable"), ("short", "shorter_than_asked")]
    b = load_segment(out / "b.npz")
    reference, lead = decode.decode_audio(clip_b, 2.0, 4.0, 16000)
    assert lead == 0.0
    np.testing.assert_array_equal(b.audio, reference)
    stamp = (out / "a.npz").stat().st_mtime_ns
    again_paths, again_failures = segment_manifest(manifest, local, out)
    assert again_paths == paths and again_failures == failures
    assert (out / "a.npz").stat().st_mtime_ns == stamp


def test_audio_starting_late(tmp_path: Path) -> None:
    late = write_video(tmp_path / "late.mp4", frames=_indexed_frames(30), fps=5, audio=_tone(5.0),
                       sample_rate=44100, audio_start_s=1.0)
    message = _failure(segment_clip(late, "c", 0.0, 4.0, SegmentConfig()), "audio_gap").message
    gap = float(message.split("audio starts ")[1].split(" s")[0])
    assert gap == pytest.approx(1.0, abs=0.03)  # within AAC's 1024-sample priming
    segment = segment_clip(late, "c", 2.0, 5.0, SegmentConfig())  # the audio covers this range
    assert isinstance(segment, Segment) and len(segment.audio) == 48000
    # a lead-in shorter than the tolerance is silence, and the tone lands on time
    slight = write_video(tmp_path / "slight.mp4", frames=_indexed_frames(30), fps=5, audio=_tone(5.0),
                         sample_rate=44100, audio_start_s=0.05)
    segment = segment_clip(slight, "c", 0.0, 3.0, SegmentConfig())
    assert isinstance(segment, Segment) and len(segment.audio) == 48000
    onset = np.argmax(np.abs(segment.audio) > 0.1) / 16000
    assert onset == pytest.approx(0.05, abs=0.003)


def test_decord_falls_back_to_pyav(monkeypatch: pytest.MonkeyPatch, indexed_clip: Path) -> None:
    def refuse(*args: object) -> None:
        raise decode.decord.DECORDError("cannot open")

    monkeypatch.setattr(decode, "video_frames_decord", refuse)
    segment = segment_clip(indexed_clip, "c", 0.0, 3.0, SegmentConfig(decoder="decord"))
    assert _which_frames(segment.frames) == [2, 7, 12]
    with pytest.raises(ValueError, match="decoder"):
        SegmentConfig(decoder="opencv")
