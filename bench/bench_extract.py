"""Feature extraction speed: model forward alone versus the whole pipeline from video files.

Writes demo clips (``pipeline.demo``), then measures in one run, with the same models:

* forward only: VGGish on log-mel examples and the frame model on preprocessed frames, all
  already in memory (audio examples/s, frames/s);
* end to end: ``extract_features`` from the MP4 files (decode, resample, frontend, preprocessing,
  batching, shard writing);

and prints their ratio (the target is end-to-end at least 0.8 of forward-only) and peak memory.
Random weights: the speed does not depend on them. Prints figures; asserts nothing.

    python bench/bench_extract.py --clips 20 --model resnet50
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extractors.extract import ClipJob, ExtractConfig, Extractors, extract_features  # noqa: E402
from pipeline.demo import CLASSES, write_demo  # noqa: E402
from pipeline.failures import Failure  # noqa: E402
from pipeline.media import SegmentConfig, segment_clip  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-clips", type=int, default=ExtractConfig.batch_clips)
    parser.add_argument("--decode-workers", type=int, default=ExtractConfig.decode_workers)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    args = parser.parse_args()

    config = ExtractConfig(visual_model=args.model, audio_weights="random", visual_weights="random",
                           batch_clips=args.batch_clips, decode_workers=args.decode_workers, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = write_demo(root / "demo", args.clips)
        paths = [(Path(p).stem, root / "demo" / p) for p in labels["path"]]
        models = Extractors(config)
        device = models.device
        print(f"device {device} (amp {models.amp}), torch threads {torch.get_num_threads()}, "
              f"audio vggish + visual {args.model}, RANDOM weights, {args.clips} demo clips of 10 s, "
              f"batch {config.batch_clips} clips, {config.decode_workers} decode threads")

        def jobs() -> list[ClipJob]:
            return [ClipJob(clip_id=c, label=CLASSES[0], label_id=0, split="train",
                            load=lambda p=p, c=c: segment_clip(p, c, 0.0, 10.0, SegmentConfig())) for c, p in paths]

        # Warm up (allocator, kernels) on two clips, untimed.
        extract_features(jobs()[:2], root / "warmup", config, extractors=models)

        # End to end first, so the peak RSS printed for it does not include the in-memory copy below.
        sync(device)
        start = time.perf_counter()
        result = extract_features(jobs(), root / "features", config, extractors=models)
        sync(device)
        end_to_end = time.perf_counter() - start
        rss_e2e = peak_rss_mib()
        gpu_e2e = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
        if result.failures:
            print(f"failures: {result.failures}")

        # Forward only: decode everything first, prepare model inputs, then time the models.
        segments = [s for s in (segment_clip(p, c, 0.0, 10.0, SegmentConfig()) for c, p in paths) if not isinstance(s, Failure)]
        with torch.inference_mode():
            examples, _ = models.audio.frontend.examples([torch.from_numpy(s.audio).to(device) for s in segments])
            frames = torch.from_numpy(np.concatenate([s.frames for s in segments])).to(device)
            pixels = torch.cat([models.visual.preprocess_batch(f) for f in frames.split(config.max_batch)])
            sync(device)
            start = time.perf_counter()
            models._chunked(models.audio, examples, 128)
            sync(device)
            audio_s = time.perf_counter() - start
            start = time.perf_counter()
            models._chunked(models.visual.backbone, pixels, models.visual.dim)
            sync(device)
            visual_s = time.perf_counter() - start
        forward = audio_s + visual_s

    n_clips, n_examples, n_frames = len(segments), len(examples), len(frames)
    print(f"forward only : audio {n_examples / audio_s:8.1f} examples/s, visual {n_frames / visual_s:8.1f} frames/s, "
          f"{n_clips / forward:6.2f} clips/s ({forward:.1f} s for {n_clips} clips, {n_examples} examples, {n_frames} frames)")
    print(f"end to end   : {n_clips / end_to_end:6.2f} clips/s ({end_to_end:.1f} s, from MP4 to shards, "
          f"{len(result.shards)} shard(s))")
    ratio = forward / end_to_end
    print(f"ratio end-to-end / forward-only: {ratio:.2f} (target >= 0.80); the pipeline adds {1 - ratio:.0%} around the models")
    print(f"peak RSS: {rss_e2e:.0f} MiB after end-to-end, {peak_rss_mib():.0f} MiB after forward-only "
          f"(which holds all decoded clips)" + (f"; peak CUDA allocated {gpu_e2e:.0f} MiB" if gpu_e2e else ""))


if __name__ == "__main__":
    main()
