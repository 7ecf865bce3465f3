"""Demo data: a small labelled set of real MP4 files (H.264 + AAC) in a folder-per-class tree.

Each class has its own sound (pitch/timbre pattern) and its own picture (shape, colour,
motion) during an annotated event, over a noisy background. Some clips hold a second,
shorter event of another class (``two_event``); in some the picture's event is heard with
another class's sound (``spurious``). ``DIR/labels.csv`` holds the ground truth.

Clips are 10 s, 160x120 at 10 fps, mono AAC at 22.05 kHz (so segmentation really
resamples to 16 kHz): small enough that a few hundred clips encode in about a minute on
two cores. Everything is seeded per clip, so the set is identical for any worker count.

    python -m pipeline.datasets.demo_videos --out DIR --clips 300
"""

from __future__ import annotations

import argparse
import os
from fractions import Fraction
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.io.atomic import atomic_path

CLASSES = ("bell", "engine", "bird", "drum", "siren")
LABELS_FILE = "labels.csv"
LABEL_COLUMNS = (
    "path", "label", "split", "start", "end", "kind",
    "audio_label", "second_label", "second_start", "second_end",
)


@dataclass(frozen=True)
class DemoConfig:
    """Shape of the demo clips; defaults keep a few hundred clips to about a minute."""

    seconds: float = 10.0
    width: int = 160
    height: int = 120
    fps: int = 10
    sample_rate: int = 22050
    seed: int = 0
    two_event_fraction: float = 0.15
    spurious_fraction: float = 0.15
    test_fraction: float = 0.33  # 180 clips: 80 train, 40 val, 60 test (val large enough to select on)
    val_fraction: float = 0.22


def write_video(
    path: str | os.PathLike[str],
    *,
    frames: np.ndarray | None,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 22050,
    frame_times: Sequence[float] | None = None,
    audio_start_s: float = 0.0,
    crf: int = 23,
    gop_size: int | None = None,
) -> Path:
    """Encode ``frames: [T, H, W, 3] uint8`` (H.264) and ``audio: [S] float32`` (AAC) into MP4.

    ``frame_times`` (seconds, increasing) gives each frame its own timestamp, for variable
    frame rate files; by default frame ``i`` shows at ``i / fps``. The audio starts at
    ``audio_start_s``. ``gop_size`` caps the frames between key frames (x264's default: 250).
    Either stream may be None.
    The file appears atomically.
    """
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            video = None
            if frames is not None:
                time_base = 1000 if frame_times is not None else fps
                video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": str(crf)})
                video.width, video.height = frames.shape[2], frames.shape[1]
                video.pix_fmt = "yuv420p"
                video.codec_context.time_base = Fraction(1, time_base)
                video.codec_context.thread_count = 1
                if gop_size is not None:
                    video.codec_context.gop_size = gop_size
            sound = None
            if audio is not None:
                sound = container.add_stream("aac", rate=sample_rate, layout="mono")
            if video is not None:
                for i, image in enumerate(frames):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                    frame.pts = round(frame_times[i] * 1000) if frame_times is not None else i
                    container.mux(video.encode(frame))
                container.mux(video.encode(None))
            if sound is not None:
                samples = np.ascontiguousarray(audio, dtype=np.float32)[None, :]
                block = 4096
                for offset in range(0, samples.shape[1], block):
                    frame = av.AudioFrame.from_ndarray(samples[:, offset:offset + block], format="flt", layout="mono")
                    frame.sample_rate = sample_rate
                    frame.pts = offset + round(audio_start_s * sample_rate)
                    container.mux(sound.encode(frame))
                container.mux(sound.encode(None))
    return Path(path)


def class_sound(label: str, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The sound of ``label`` for ``seconds``: ``[S] float32``, peak about 0.3, jittered by ``rng``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    pitch = rng.uniform(0.95, 1.05)
    if label == "bell":  # struck 880 Hz bell with an inharmonic partial, twice a second
        phase = t % 0.5
        wave = (np.sin(2 * np.pi * 880 * pitch * t) + 0.4 * np.sin(2 * np.pi * 2400 * pitch * t)) * np.exp(-8 * phase)
    elif label == "engine":  # 90 Hz buzz (odd harmonics) with an 8 Hz throb
        wave = sum(np.sin(2 * np.pi * 90 * pitch * k * t) / k for k in (1, 3, 5, 7)) * (0.6 + 0.4 * np.sin(2 * np.pi * 8 * t))
    elif label == "bird":  # rising 2.5-4 kHz chirps, 0.15 s every 0.4 s
        phase = t % 0.4
        freq = 2500 * pitch + 10000 * phase
        wave = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * (phase < 0.15)
    elif label == "drum":  # low thump plus a noise burst, twice a second
        phase = t % 0.5
        wave = (np.sin(2 * np.pi * 60 * pitch * t) + 0.5 * rng.standard_normal(len(t))) * np.exp(-20 * phase)
    elif label == "siren":  # tone sweeping 600-1200 Hz every 2 s
        freq = pitch * (900 + 300 * np.sin(2 * np.pi * 0.5 * t))
        wave = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
    else:
        raise ValueError(f"unknown demo class {label!r}; known: {CLASSES}")
    wave = np.asarray(wave, dtype=np.float64)
    return (0.3 * wave / max(np.abs(wave).max(), 1e-9)).astype(np.float32)


def draw_class(image: np.ndarray, label: str, progress: float) -> None:
    """Draw the picture of ``label`` into ``image: [H, W, 3] uint8`` in place; ``progress`` in [0, 1] drives motion."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    size = min(height, width) / 6
    wave = np.sin(2 * np.pi * 2 * progress)
    if label == "bell":  # yellow disc bouncing up and down
        cy, cx = height / 2 + wave * height / 4, width / 2
        mask, colour = (yy - cy) ** 2 + (xx - cx) ** 2 < size**2, (230, 210, 30)
    elif label == "engine":  # red square crossing left to right
        cy, cx = height / 2, size + progress * (width - 2 * size)
        mask, colour = (abs(yy - cy) < size) & (abs(xx - cx) < size), (220, 30, 30)
    elif label == "bird":  # blue triangle zigzagging along the diagonal
        cy, cx = size + progress * (height - 2 * size), width / 2 + wave * width / 4
        mask, colour = (yy - cy + size > 0) & (abs(xx - cx) < (yy - cy + size) / 2) & (yy - cy < size), (40, 80, 230)
    elif label == "drum":  # green square pulsing in the centre
        half = size * (1 + 0.5 * wave)
        mask, colour = (abs(yy - height / 2) < half) & (abs(xx - width / 2) < half), (40, 200, 60)
    elif label == "siren":  # magenta ring circling the centre
        angle = 2 * np.pi * progress
        cy, cx = height / 2 + np.sin(angle) * height / 4, width / 2 + np.cos(angle) * width / 4
        radius = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask, colour = (radius < size) & (radius > size / 2), (220, 40, 220)
    else:
        raise ValueError(f"unknown demo class {label!r}; known: {CLASSES}")
    image[mask] = colour


@dataclass(frozen=True)
class _Event:
    label: str  # picture
    sound: str  # sound heard during the event
    start: float
    end: float


def _plan(index: int, config: DemoConfig) -> tuple[dict[str, object], list[_Event]]:
    """The ground-truth row and the events of clip ``index`` (deterministic in ``config.seed``)."""
    rng = np.random.default_rng([config.seed, index, 1])
    label = CLASSES[index % len(CLASSES)]
    other = CLASSES[(index % len(CLASSES) + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)]
    draw = rng.random()
    kind = "two_event" if draw < config.two_event_fraction else (
        "spurious" if draw < config.two_event_fraction + config.spurious_fraction else "single")
    seconds = config.seconds
    row: dict[str, object] = {"kind": kind, "label": label, "audio_label": label,
                              "second_label": "", "second_start": np.nan, "second_end": np.nan}
    if kind == "two_event":  # main event in one half, a shorter one of another class in the other
        length, second = rng.uniform(0.3, 0.45) * seconds, rng.uniform(0.15, 0.3) * seconds
        first_half = rng.random() < 0.5
        start = rng.uniform(0, seconds / 2 - length) + (0 if first_half else seconds / 2)
        second_start = rng.uniform(0, seconds / 2 - second) + (seconds / 2 if first_half else 0)
        events = [_Event(label, label, start, start + length), _Event(other, other, second_start, second_start + second)]
        row.update(second_label=other, second_start=second_start, second_end=second_start + second)
    else:
        length = rng.uniform(0.3, 0.8) * seconds
        start = rng.uniform(0, seconds - length)
        sound = other if kind == "spurious" else label
        events = [_Event(label, sound, start, start + length)]
        row["audio_label"] = sound
    row.update(start=events[0].start, end=events[0].end)
    position = index // len(CLASSES)  # per-class index: splits are stratified by construction
    slot = (position * 7919) % 100 / 100
    row["split"] = "test" if slot < config.test_fraction else (
        "val" if slot < config.test_fraction + config.val_fraction else "train")
    row["path"] = f"{label}/{label}_{index:05d}.mp4"
    return row, events


def render_clip(index: int, config: DemoConfig) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    """Render clip ``index``: its ground-truth row, ``frames: [T, H, W, 3] uint8`` and ``audio: [S] float32``."""
    row, events = _plan(index, config)
    rng = np.random.default_rng([config.seed, index, 2])
    n_samples = round(config.seconds * config.sample_rate)
    audio = (0.02 * rng.standard_normal(n_samples)).astype(np.float32)
    n_frames = round(config.seconds * config.fps)
    base = rng.integers(30, 90, size=3).astype(np.uint8)  # background colour, plus uniform noise of +-8
    frames = base + rng.integers(0, 17, size=(n_frames, config.height, config.width, 3), dtype=np.uint8) - np.uint8(8)
    for event in events:
        first, last = round(event.start * config.sample_rate), round(event.end * config.sample_rate)
        audio[first:last] += class_sound(event.sound, (last - first) / config.sample_rate, config.sample_rate, rng)
        for i in range(n_frames):
            t = i / config.fps
            if event.start <= t < event.end:
                draw_class(frames[i], event.label, (t - event.start) / (event.end - event.start))
    return row, frames, audio


def _write_clip(job: tuple[int, DemoConfig, Path]) -> dict[str, object]:
    index, config, out = job
    row, _ = _plan(index, config)
    target = out / str(row["path"])
    if not target.exists():  # files appear atomically, so an existing one is complete
        row, frames, audio = render_clip(index, config)
        write_video(target, frames=frames, fps=config.fps, audio=audio, sample_rate=config.sample_rate)
    return row


def write_demo(out: str | os.PathLike[str], clips: int, *, config: DemoConfig = DemoConfig(), workers: int | None = None) -> pd.DataFrame:
    """Write ``clips`` demo clips under ``out/<class>/`` and ``out/labels.csv``; return the labels.

    Clips already on disk are kept (they are deterministic), so a killed run resumes.
    """
    if clips < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")
    out = Path(out)
    jobs = [(i, config, out) for i in range(clips)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    progress = dict(total=clips, desc="demo clips", unit="clip", disable=None)  # None: off unless a terminal
    if workers > 1 and clips > 4:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(tqdm(pool.map(_write_clip, jobs, chunksize=4), **progress))
    else:
        rows = [_write_clip(job) for job in tqdm(jobs, **progress)]
    labels = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    with atomic_path(out / LABELS_FILE) as tmp:
        labels.to_csv(tmp, index=False, float_format="%.3f")
    return labels


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m pipeline.datasets.demo_videos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write <class>/<clip>.mp4 and labels.csv into")
    parser.add_argument("--clips", type=int, default=100, help="number of clips (classes take turns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=DemoConfig.seconds)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    labels = write_demo(args.out, args.clips, config=DemoConfig(seed=args.seed, seconds=args.seconds), workers=args.workers)
    counts = labels.groupby(["kind"]).size().to_dict()
    print(f"wrote {len(labels)} clips of {len(CLASSES)} classes to {args.out} ({counts}); ground truth in {args.out / LABELS_FILE}")


if __name__ == "__main__":
    main()
