"""Decode throughput: 1 frame per second from 10-s 640x360 clips, decord vs PyAV vs the ffmpeg CLI,
and the whole segmentation stage's clips per second. Prints figures; asserts nothing.

    python bench/bench_decode.py [--clips 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.media import decode
from pipeline.datasets.demo_videos import write_video
from pipeline.media.segment import SegmentConfig, segment_clip, segment_manifest

SECONDS, FPS, WIDTH, HEIGHT, RATE = 10, 25, 640, 360, 44100


def make_clips(folder: Path, count: int) -> list[Path]:
    """``count`` 10-s 640x360 25 fps H.264 clips (key frame every 2 s, as on YouTube) with 44.1 kHz AAC."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    paths = []
    for n in range(count):
        frames = np.empty((SECONDS * FPS, HEIGHT, WIDTH, 3), dtype=np.uint8)
        for i in range(len(frames)):
            frames[i, ..., 0] = (xx + 4 * i) % 256
            frames[i, ..., 1] = (yy + 2 * i + 40 * n) % 256
            frames[i, ..., 2] = (xx // 8 + yy // 8 + i) % 64 * 4 + rng.integers(0, 8, size=(HEIGHT, WIDTH), dtype=np.uint8)
        audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SECONDS * RATE) / RATE)).astype(np.float32)
        paths.append(write_video(folder / f"clip{n}.mp4", frames=frames, fps=FPS, audio=audio, sample_rate=RATE,
                                 gop_size=2 * FPS))
    return paths


def ffmpeg_frames(path: Path, targets: np.ndarray) -> np.ndarray:
    """1 fps frames through the ffmpeg CLI (argument list, raw RGB on stdout): ``[T, H, W, 3]``."""
    args = ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"fps=1:start_time={targets[0] - 0.5}",
            "-frames:v", str(len(targets)), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    data = subprocess.run(args, check=True, capture_output=True).stdout
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, HEIGHT, WIDTH, 3)


def clips_per_second(paths: list[Path], work: Callable[[Path], object], repeats: int) -> float:
    """Best of ``repeats`` passes over ``paths``, in clips per second."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            work(path)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    targets = decode.frame_targets(0.0, SECONDS, 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_clips(Path(tmp), args.clips)
        print(f"{args.clips} clips, {SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps H.264 + AAC {RATE} Hz; "
              f"10 frames each (1 per second, mid-second); best of {args.repeats}; {os.cpu_count()} CPUs")
        print("frames only, native size, RGB:")
        rates = {
            "decord": clips_per_second(paths, lambda p: decode.video_frames_decord(p, targets, None), args.repeats),
            "pyav": clips_per_second(paths, lambda p: decode.video_frames_pyav(p, targets, None), args.repeats),
        }
        if shutil.which("ffmpeg"):
            rates["ffmpeg CLI"] = clips_per_second(paths, lambda p: ffmpeg_frames(p, targets), args.repeats)
        for name, rate in rates.items():
            print(f"  {name:<10} {rate:7.2f} clips/s  ({rate / rates['pyav']:.2f}x PyAV)")
        if not shutil.which("ffmpeg"):
            print("  ffmpeg CLI not present")
        print("whole segment_clip (16 kHz audio + 10 frames resized to 224x224):")
        for decoder in ("decord", "pyav"):
            config = SegmentConfig(decoder=decoder)
            rate = clips_per_second(paths, lambda p: segment_clip(p, "c", 0.0, float(SECONDS), config), args.repeats)
            print(f"  {decoder:<10} {rate:7.2f} clips/s")
        manifest = pd.DataFrame({"clip_id": [f"c{i}" for i in range(len(paths))], "clip_start_s": 0.0,
                                 "clip_end_s": float(SECONDS)})
        local = {f"c{i}": str(p) for i, p in enumerate(paths)}
        stage = SegmentConfig()
        for workers in (1, 2):
            out = Path(tmp) / f"clips{workers}"
            start = time.perf_counter()
            written, failures = segment_manifest(manifest, local, out, config=stage, workers=workers)
            elapsed = time.perf_counter() - start
            print(f"segment stage (segment_manifest, {stage.decoder}, writes .npz), {workers} worker(s): "
                  f"{len(written) / elapsed:.2f} clips/s, {len(failures)} failures")


if __name__ == "__main__":
    main()
