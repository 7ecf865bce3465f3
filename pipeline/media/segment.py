"""Segmentation: one manifest row's clip as 16 kHz mono audio plus frames sampled per second.

Checks become failure records (never zero-filled): ``undecodable`` (unreadable or
truncated file), ``no_audio``, ``no_video``, ``silent`` (RMS below a threshold),
``too_short`` (less than ``min_seconds`` left), ``audio_gap`` (the audio stream
starts more than ``length_tolerance_s`` after the clip start; a shorter lead-in is silence). A clip shorter than asked but above the
minimum is kept (``Segment.short_by_s`` says by how much) and reported as a
``shorter_than_asked`` record so the failures table shows it.

Frames are resized once to 224x224 (the AVE recipe's frame size, what ResNet and ViT
take): every clip's frames then stack into one batch, the extractors need no resize,
and the on-disk clips stay small. ``SegmentConfig.frame_size=None`` keeps the source size.

Frames come from PyAV by default: in ``bench/bench_decode.py`` it was as fast as decord or
faster at one frame per second from 10-s clips (decord seeks per sampled frame, which costs
most when key frames are far apart; PyAV decodes forward once). ``decoder="decord"`` is
there for long sources sampled sparsely.

A :class:`ClipJob` is one clip to extract with a loader that cuts it (what ``extractors.extract``
consumes: extractors never read manifests); ``pipeline.features.build.clip_jobs`` makes them from
acquired manifest rows, through :func:`local_window` as :func:`segment_manifest` does.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.media import decode
from pipeline.io.atomic import atomic_path
from pipeline.features.failures import Failure
from pipeline.vocab import CLIP_ID_PATTERN, is_clip_id

log = logging.getLogger(__name__)
STAGE = "segment"


@dataclass(frozen=True)
class SegmentConfig:
    """How clips are normalised; the defaults are what VGGish and the frame extractors expect."""

    sample_rate: int = 16000
    fps: float = 1.0
    frame_size: tuple[int, int] | None = (224, 224)  # (H, W); None keeps the source size
    min_seconds: float = 1.0
    length_tolerance_s: float = 0.1  # shortfalls up to this are codec framing, not a short clip
    silence_rms: float = 1e-3  # about -60 dBFS
    decoder: str = "pyav"  # or "decord" (PyAV when decord cannot read the file); PyAV measured faster, see bench

    def __post_init__(self) -> None:
        if self.decoder not in ("decord", "pyav"):
            raise ValueError(f"decoder must be 'decord' or 'pyav', got {self.decoder!r}")
        if self.fps <= 0 or self.sample_rate <= 0:
            raise ValueError(f"fps and sample_rate must be positive, got {self.fps}, {self.sample_rate}")


@dataclass
class Segment:
    """A clip's normalised media.

    Args:
        clip_id: the manifest's clip id.
        audio: ``[S] float32`` mono at ``sample_rate``.
        frames: ``[T, H, W, 3] uint8`` RGB.
        frame_times: ``[T]`` seconds relative to the clip start (the middle of each period).
        sample_rate: audio rate in Hz.
        short_by_s: how much shorter than asked the clip is (0 when whole).
    """

    clip_id: str
    audio: np.ndarray
    frames: np.ndarray
    frame_times: np.ndarray
    sample_rate: int = 16000
    short_by_s: float = 0.0

    @property
    def seconds(self) -> float:
        """Length of the clip's audio in seconds."""
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class ClipJob:
    """One clip to extract: its labels and a callable that decodes it (``Segment`` or ``Failure``)."""

    clip_id: str
    label: str
    label_id: int
    split: str
    load: Callable[[], Segment | Failure]


def local_window(start_s: float, end_s: float, local_start_s: float) -> tuple[float, float]:
    """A manifest clip range ``[start_s, end_s)`` (source seconds) in a local file that starts at source time
    ``local_start_s`` (a ranged download; 0 for a whole file): shifted, and clamped at the file's start."""
    return max(0.0, start_s - local_start_s), end_s - local_start_s


def segment_clip(
    path: str | os.PathLike[str], clip_id: str, start_s: float, end_s: float, config: SegmentConfig = SegmentConfig()
) -> Segment | Failure:
    """Cut ``[start_s, end_s)`` (seconds in the file; ``end_s`` NaN = to the end) out of ``path``.

    Returns a :class:`Segment`, or a :class:`Failure` saying why the clip cannot be used.
    """
    def fail(kind: str, message: str) -> Failure:
        return Failure(clip_id=clip_id, stage=STAGE, kind=kind, message=f"{path}: {message}")

    end = math.inf if end_s is None or math.isnan(end_s) else float(end_s)
    try:
        info = decode.probe(path)
    except (av.error.FFmpegError, OSError) as error:
        return fail("undecodable", f"cannot open: {error}")
    if not info.has_video:
        return fail("no_video", "no video stream")
    if not info.has_audio:
        return fail("no_audio", "no audio stream")
    try:
        audio, lead = decode.decode_audio(path, start_s, end, config.sample_rate)
        if lead > config.length_tolerance_s:
            return fail("audio_gap", f"audio starts {lead:.2f} s after the clip start {start_s:.2f} s")
        if lead:  # a lead-in shorter than codec framing that the stream does not cover is silence
            audio = np.concatenate([np.zeros(round(lead * config.sample_rate), np.float32), audio])
        audio_end = start_s + len(audio) / config.sample_rate
        frames, video_end = _frames(path, start_s, end, info, config)
    except av.error.FFmpegError as error:
        return fail("undecodable", f"decode error: {error}")
    available = min(audio_end, video_end, end) - start_s
    if available < config.min_seconds:
        asked = "to the end" if math.isinf(end) else f"{end - start_s:.2f} s"
        return fail("too_short", f"asked {asked} from {start_s:.2f} s, only {max(available, 0):.2f} s there "
                                 f"(audio to {audio_end:.2f} s, video to {video_end:.2f} s; minimum {config.min_seconds} s)")
    audio = audio[: round(available * config.sample_rate)]
    rms = _rms(audio)
    if rms < config.silence_rms:
        return fail("silent", f"audio RMS {rms:.2e} is below {config.silence_rms:.0e}")
    times = decode.frame_targets(0.0, available, config.fps)
    frames = frames[: len(times)]
    if len(frames) < len(times):
        return fail("undecodable", f"{len(times)} frames asked up to {available:.2f} s, {len(frames)} decoded")
    short_by = 0.0 if math.isinf(end) else max(0.0, end - start_s - available)
    return Segment(clip_id=clip_id, audio=audio, frames=frames, frame_times=times,
                   sample_rate=config.sample_rate, short_by_s=short_by if short_by > config.length_tolerance_s else 0.0)


def _rms(audio: np.ndarray, block: int = 1 << 20) -> float:
    """Root mean square of ``audio: [S]`` in float64, a block at a time (no clip-long float64 copy)."""
    total = sum(float(np.dot(part.astype(np.float64), part)) for part in np.split(audio, range(block, len(audio), block)))
    return float(np.sqrt(total / max(len(audio), 1)))


def _frames(path: str | os.PathLike[str], start_s: float, end: float, info: decode.Probe,
            config: SegmentConfig) -> tuple[np.ndarray, float]:
    """Frames ``[T, H, W, 3]`` for the clip's whole periods, and where the video stream ends."""
    known_end = info.duration_s if math.isinf(end) and not math.isnan(info.duration_s) else end
    targets = decode.frame_targets(start_s, known_end - start_s, config.fps) if not math.isinf(known_end) else None
    if config.decoder == "decord" and decode.decord is not None and targets is not None:
        try:
            frames, video_end = decode.video_frames_decord(path, targets, config.frame_size)
            keep = targets < video_end
            return frames[keep], video_end
        except decode.decord.DECORDError as error:
            log.warning("decord cannot read %s (%s); decoding with PyAV", path, error)
    if targets is None:
        targets = decode.frame_targets(start_s, 24 * 3600.0, config.fps)
    return decode.video_frames_pyav(path, targets, config.frame_size, end_s=end)


def save_segment(segment: Segment, path: str | os.PathLike[str]) -> Path:
    """Write ``segment`` atomically as an ``.npz`` file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, clip_id=np.array(segment.clip_id), audio=segment.audio, frames=segment.frames,
                 frame_times=segment.frame_times, sample_rate=np.array(segment.sample_rate),
                 short_by_s=np.array(segment.short_by_s))
    return Path(path)


def load_segment(path: str | os.PathLike[str]) -> Segment:
    """Read a segment written by :func:`save_segment`."""
    with np.load(path, allow_pickle=False) as data:
        return Segment(clip_id=str(data["clip_id"]), audio=data["audio"], frames=data["frames"],
                       frame_times=data["frame_times"], sample_rate=int(data["sample_rate"]),
                       short_by_s=float(data["short_by_s"]))


def clip_path(directory: str | os.PathLike[str], clip_id: str, suffix: str) -> Path:
    """``directory/<clip_id><suffix>``; raises ``ValueError`` for an id that is not a plain name (CLIP_ID_PATTERN)."""
    if not is_clip_id(clip_id):
        raise ValueError(f"clip_id {clip_id!r} is not a valid name (must match {CLIP_ID_PATTERN.pattern})")
    return Path(directory) / f"{clip_id}{suffix}"


def segment_path(out_dir: str | os.PathLike[str], clip_id: str) -> Path:
    """Where clip ``clip_id``'s segment lives under ``out_dir``."""
    return clip_path(out_dir, clip_id, ".npz")


def _segment_job(job: tuple[str, str, float, float, Path, SegmentConfig]) -> Failure | None | float:
    clip_id, source, start, end, target, config = job
    result = segment_clip(source, clip_id, start, end, config)
    if isinstance(result, Failure):
        return result
    save_segment(result, target)
    return result.short_by_s


def segment_manifest(
    manifest: pd.DataFrame,
    local_paths: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    config: SegmentConfig = SegmentConfig(),
    local_offsets: Mapping[str, float] | None = None,
    workers: int = 1,
) -> tuple[list[Path], list[Failure]]:
    """Segment every manifest row whose clip was acquired (``local_paths[clip_id]``) into ``out_dir/<clip_id>.npz``.

    ``local_offsets[clip_id]`` is the source time at which the local file starts (a ranged
    download), subtracted from the manifest's clip range. Segments already on disk are kept.
    Returns the written segment paths and the failure records.
    """
    jobs, paths, failures = [], [], []
    offsets = local_offsets or {}
    for row in manifest.itertuples(index=False):
        target = segment_path(out_dir, row.clip_id)
        if row.clip_id not in local_paths:
            continue  # acquisition recorded why
        paths.append(target)
        if target.exists():  # written atomically, so complete; keep its shortfall in the report
            with np.load(target, allow_pickle=False) as done:
                short_by = float(done["short_by_s"])
            if short_by:
                failures.append(_shorter(row.clip_id, str(local_paths[row.clip_id]), short_by))
            continue
        start, end = local_window(row.clip_start_s, row.clip_end_s, float(offsets.get(row.clip_id, 0.0)))
        jobs.append((row.clip_id, str(local_paths[row.clip_id]), start, end, target, config))
    progress = dict(total=len(jobs), desc="segment", unit="clip", disable=None)  # None: off unless a terminal
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(_segment_job, jobs, chunksize=2), **progress))
    else:
        results = [_segment_job(job) for job in tqdm(jobs, **progress)]
    for job, result in zip(jobs, results):
        if isinstance(result, Failure):
            failures.append(result)
        elif result:
            failures.append(_shorter(job[0], job[1], result))
    order = {clip_id: i for i, clip_id in enumerate(manifest["clip_id"])}
    failed = {f.clip_id for f in failures if f.kind != "shorter_than_asked"}
    return [p for p in paths if p.stem not in failed], sorted(failures, key=lambda f: order[f.clip_id])


def _shorter(clip_id: str, source: str, short_by: float) -> Failure:
    return Failure(clip_id=clip_id, stage=STAGE, kind="shorter_than_asked",
                   message=f"{source}: {short_by:.2f} s shorter than asked; kept what exists")
