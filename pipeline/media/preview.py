"""Small previews of a clip for people to look at: one frame as a PNG thumbnail, a few seconds of sound as WAV.

Used by the retrieval page (``hscmae.retrieval_page``); only ``file`` sources of a manifest are
previewed (downloads and archive members are not kept where a run could find them again).
"""

from __future__ import annotations

import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.media import decode

PREVIEW_RATE = 16000  # Hz, mono: what the audio extractor hears
PREVIEW_SECONDS = 4.0
THUMB_SIZE = (90, 120)  # (H, W)


@dataclass(frozen=True)
class Preview:
    """A clip's thumbnail (PNG) and sound (WAV) files."""

    thumbnail: Path
    audio: Path


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> Path:
    """Write mono float samples ``[S]`` in ``[-1, 1]`` as 16-bit PCM WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return Path(path)


def write_preview(source: str | os.PathLike[str], start_s: float, end_s: float, out_dir: str | os.PathLike[str],
                  name: str, *, frame_s: float = math.nan) -> Preview:
    """A thumbnail and the clip's first :data:`PREVIEW_SECONDS` of sound, as ``out_dir/name.png`` and ``.wav``.

    The thumbnail is the frame on screen at ``frame_s`` (seconds in the file; e.g. the middle of the
    annotated event), by default the middle of the previewed span. ``end_s`` may be NaN (the clip runs to
    the end of the file). Raises ``av.error.FFmpegError`` or ``ValueError`` when the file holds no frame or
    no sound there.
    """
    from matplotlib.image import imsave

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if math.isnan(end_s):
        end_s = decode.probe(source).duration_s  # NaN too when the container does not say
    stop = start_s + PREVIEW_SECONDS if math.isnan(end_s) else min(end_s, start_s + PREVIEW_SECONDS)
    at = (start_s + stop) / 2 if math.isnan(frame_s) else frame_s
    frames, _ = decode.video_frames_pyav(source, np.array([at]), THUMB_SIZE, end_s=max(stop, at))
    samples, _ = decode.decode_audio(source, start_s, stop, PREVIEW_RATE)
    if len(frames) == 0 or len(samples) == 0:
        raise ValueError(f"{source}: no frame or no sound between {start_s:.2f} s and {stop:.2f} s")
    thumbnail = out_dir / f"{name}.png"
    imsave(thumbnail, frames[0])
    return Preview(thumbnail=thumbnail, audio=write_wav(out_dir / f"{name}.wav", samples, PREVIEW_RATE))


def try_preview(source: str | os.PathLike[str], start_s: float, end_s: float, out_dir: str | os.PathLike[str],
                name: str, *, frame_s: float = math.nan) -> Preview | str:
    """:func:`write_preview`, or the reason it could not be made (a page shows the reason instead)."""
    try:
        return write_preview(source, start_s, end_s, out_dir, name, frame_s=frame_s)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return f"no preview: {type(exc).__name__}: {exc}"
