"""Peak memory and row alignment of segmentation + extraction for a 1-minute and a 30-minute clip.

Each clip (32x32 frames at 2 fps, 16 kHz mono AAC, made here with PyAV) is segmented and its
features extracted (random-weight VGGish and ResNet-50, CPU) in a fresh process, so each peak
(``ru_maxrss``) is that clip's alone. Prints both peaks, their ratio, and the audio and visual
rows per clip (equal: both on the one-second grid). Asserts nothing.

    python bench/bench_long_media.py [--minutes 1 30] [--frame-size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FPS, RATE = 2, 16000


def make_clip(path: Path, seconds: int, size: int) -> Path:
    """A ``seconds``-long ``size`` x ``size`` video with a changing picture and noise audio."""
    from pipeline.datasets.demo_videos import write_video

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(seconds * FPS, size, size, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(seconds * RATE)).astype(np.float32)
    return write_video(path, frames=frames, fps=FPS, audio=audio, sample_rate=RATE)


def child(path: Path, size: int) -> None:
    """Segment and extract one clip; print rows, seconds and peak memory as JSON."""
    import torch

    from extractors.config import ExtractConfig
    from extractors.extract import Extractors
    from pipeline.media.segment import SegmentConfig, segment_clip

    torch.set_num_threads(1)
    models = Extractors(ExtractConfig(audio_weights="random", visual_weights="random", device="cpu"))
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    segment = segment_clip(path, "clip", 0.0, float("nan"), SegmentConfig(frame_size=(size, size)))
    audio, visual = models.features([segment])[0]
    print(json.dumps({"audio_rows": len(audio), "visual_rows": len(visual), "seconds": time.perf_counter() - started,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "models_mib": loaded / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[1, 30])
    parser.add_argument("--frame-size", type=int, default=32, help="frames are made and segmented at this size")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.frame_size)
        return
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for minutes in args.minutes:
            clip = make_clip(Path(folder) / f"{minutes}min.mp4", minutes * 60, args.frame_size)
            run = subprocess.run([sys.executable, __file__, "--child", str(clip), "--frame-size", str(args.frame_size)],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            results[minutes] = json.loads(run.stdout.strip().splitlines()[-1])
            r = results[minutes]
            print(f"{minutes:3d} min: audio rows {r['audio_rows']}, visual rows {r['visual_rows']}, "
                  f"peak {r['peak_mib']:.0f} MiB (models loaded: {r['models_mib']:.0f} MiB), {r['seconds']:.1f} s")
    low, high = min(args.minutes), max(args.minutes)
    print(f"peak ratio {high} min / {low} min: {results[high]['peak_mib'] / results[low]['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
