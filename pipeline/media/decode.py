"""Decoding: probe a media file, decode its audio to 16 kHz mono, sample its frames by timestamp.

PyAV decodes and resamples audio (any codec; never a stream copy). Frames are picked by
presentation time, not by index, so variable-frame-rate files give the right pictures:
the frame shown at time ``t`` is the last one whose timestamp is ``<= t``. Frames are read
with PyAV (forward decode) or decord (random access; optional, PyAV reads every file it reads).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import av
import numpy as np

log = logging.getLogger(__name__)

try:  # decord is optional: PyAV reads every file decord reads
    import decord
except ImportError:  # pragma: no cover - depends on the environment
    decord = None


@dataclass(frozen=True)
class Probe:
    """What a file holds: which streams, and where each ends (seconds from the file's start)."""

    has_audio: bool
    has_video: bool
    duration_s: float  # container duration; NaN when the container does not say
    width: int
    height: int


def probe(path: str | os.PathLike[str]) -> Probe:
    """Read the container header. Raises ``av.error.FFmpegError`` when the file is unreadable."""
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        duration = container.duration / av.time_base if container.duration is not None else float("nan")
        return Probe(
            has_audio=bool(container.streams.audio),
            has_video=video is not None,
            duration_s=duration,
            width=video.codec_context.width if video is not None else 0,
            height=video.codec_context.height if video is not None else 0,
        )


def decode_audio(
    path: str | os.PathLike[str], start_s: float, end_s: float, sample_rate: int
) -> tuple[np.ndarray, float]:
    """Decode ``[start_s, end_s)`` of the first audio stream as ``[S] float32`` mono at ``sample_rate``.

    ``end_s`` may be ``inf`` (to the end). Returns the samples and ``lead_s``: how long after
    ``start_s`` the stream's first sample lies (0 unless the stream starts late); sample ``k``
    sits at ``start_s + lead_s + k / sample_rate``. The result is shorter than asked when the
    stream ends early. Raises ``av.error.FFmpegError``.
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    first_time: float | None = None
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        known = container.duration / av.time_base if container.duration is not None else 60.0
        audio = _Samples(int((min(end_s, known) - max(0.0, start_s - 1.0) + 1.0) * sample_rate))
        if start_s > 1.0:  # audio frames are all key frames: seek a little before the start
            container.seek(int((start_s - 1.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if first_time is None:
                first_time = float(frame.time) if frame.time is not None else 0.0
            for out in resampler.resample(frame):
                audio.append(out.to_ndarray().reshape(-1))
            if frame.time is not None and frame.time > end_s:
                break
        for out in resampler.resample(None):
            audio.append(out.to_ndarray().reshape(-1))
    audio = audio.array()
    if not len(audio):
        return audio, 0.0
    offset = round((start_s - (first_time or 0.0)) * sample_rate)
    lead = max(0, -offset)
    stop = len(audio) if np.isinf(end_s) else max(0, offset + round((end_s - start_s) * sample_rate))
    return audio[max(0, offset):stop], lead / sample_rate


class _Samples:
    """A float32 sample buffer filled in place (sized from the container's duration), so a long
    clip's audio is held once, not as chunks plus their concatenation."""

    def __init__(self, expected: int) -> None:
        self.buffer = np.empty(max(expected, 1), dtype=np.float32)
        self.used = 0

    def append(self, chunk: np.ndarray) -> None:
        if self.used + len(chunk) > len(self.buffer):
            grown = np.empty(max(2 * len(self.buffer), self.used + len(chunk)), dtype=np.float32)
            grown[: self.used] = self.buffer[: self.used]
            self.buffer = grown
        self.buffer[self.used: self.used + len(chunk)] = chunk
        self.used += len(chunk)

    def array(self) -> np.ndarray:
        """The samples ``[S] float32`` (a view of the buffer)."""
        return self.buffer[: self.used]


def frame_targets(start_s: float, length_s: float, fps: float) -> np.ndarray:
    """Times (seconds in the file) to sample: the middle of each ``1/fps`` period of the clip. ``[T]``."""
    count = int(np.floor(length_s * fps + 1e-6))
    return start_s + (np.arange(count) + 0.5) / fps


def pick_indices(frame_starts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target time, the index of the frame on screen then (last start ``<= t``). ``[T]`` int."""
    return np.clip(np.searchsorted(frame_starts, targets + 1e-6, side="right") - 1, 0, len(frame_starts) - 1)


def video_frames_decord(
    path: str | os.PathLike[str], targets: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, float]:
    """Frames at ``targets`` as ``[T, H, W, 3] uint8`` RGB (resized to ``size=(H, W)``) and the video's end time.

    Raises ``decord.DECORDError`` when decord cannot read the file.
    """
    height, width = size if size is not None else (-1, -1)
    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    times = reader.get_frame_timestamp(np.arange(len(reader)))  # [N, 2] start, end seconds
    order = np.argsort(times[:, 0], kind="stable")
    indices = order[pick_indices(times[order, 0], targets)]
    frames = reader.get_batch(indices.tolist()).asnumpy() if len(indices) else _empty_frames(size)
    return frames, float(times[:, 1].max())


def video_frames_pyav(
    path: str | os.PathLike[str], targets: np.ndarray, size: tuple[int, int] | None, end_s: float = float("inf")
) -> tuple[np.ndarray, float]:
    """Same as :func:`video_frames_decord`, decoding with PyAV; stops after ``end_s`` (the video's end is then at least ``end_s``).

    Raises ``av.error.FFmpegError`` on a decode error.
    """
    picked: list[np.ndarray] = []
    previous = None
    video_end = 0.0
    next_target = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if len(targets) and targets[0] > 2.0:
            container.seek(int((targets[0] - 1.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            start = float(frame.time)
            duration = float(frame.duration * stream.time_base) if frame.duration else 0.0
            video_end = max(video_end, start + duration)
            while next_target < len(targets) and previous is not None and start > targets[next_target] + 1e-6:
                picked.append(_rgb(previous, size))
                next_target += 1
            previous = frame
            if next_target >= len(targets) and start > end_s:
                break
        while next_target < len(targets) and previous is not None:  # the last frame stays on screen
            if video_end < targets[next_target]:
                break
            picked.append(_rgb(previous, size))
            next_target += 1
    return (np.stack(picked) if picked else _empty_frames(size)), video_end


def _rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", height=size[0], width=size[1])


def _empty_frames(size: tuple[int, int] | None) -> np.ndarray:
    height, width = size if size is not None else (0, 0)
    return np.zeros((0, height, width, 3), dtype=np.uint8)
