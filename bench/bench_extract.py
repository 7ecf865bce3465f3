"""Feature extraction speed: model forward alone versus the whole pipeline from video files.

Writes demo clips (``pipeline.datasets.demo_videos``), then measures in one run, with the same models:

* forward only: VGGish on log-mel examples and the frame model on preprocessed frames, all
  already in memory (audio examples/s, frames/s);
* end to end: ``extract_features`` from the MP4 files (decode, resample, frontend, preprocessing,
  batching, shard writing);

and prints their ratio (the target is end-to-end at least 0.8 of forward-only) and peak memory.
Random weights: the speed does not depend on them. Prints figures; asserts nothing.

    python bench/bench_extract.py --clips 20 --seconds 5 --model resnet50
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extractors.config import ExtractConfig  # noqa: E402
from extractors.extract import ClipJob, Extractors, extract_features  # noqa: E402
from pipeline.datasets.demo_videos import CLASSES, DemoConfig, write_demo  # noqa: E402
from pipeline.features.failures import Failure  # noqa: E402
from pipeline.media.segment import SegmentConfig, segment_clip  # noqa: E402
from device_check import model_batches  # noqa: E402  (beside this file: sys.path[0] when run as a script)


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
    parser.add_argument("--seconds", type=float, default=5.0, help="demo clip length")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each measurement; best is kept")
    args = parser.parse_args()

    config = ExtractConfig(visual_model=args.model, audio_weights="random", visual_weights="random",
                           batch_clips=args.batch_clips, decode_workers=args.decode_workers, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = write_demo(root / "demo", args.clips, config=DemoConfig(seconds=args.seconds))
        paths = [(Path(p).stem, root / "demo" / p) for p in labels["path"]]
        models = Extractors(config)
        device = models.device
        print(f"device {device} (amp {models.amp}), torch threads {torch.get_num_threads()}, "
              f"audio vggish + visual {args.model}, RANDOM weights, {args.clips} demo clips of {args.seconds:g} s, "
              f"batch {config.batch_clips} clips, {config.decode_workers} decode threads")

        def jobs() -> list[ClipJob]:
            return [ClipJob(clip_id=c, label=CLASSES[0], label_id=0, split="train",
                            load=lambda p=p, c=c: segment_clip(p, c, 0.0, args.seconds, SegmentConfig())) for c, p in paths]

        def end_to_end(run: int) -> tuple[float, float]:
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            result = extract_features(jobs(), root / f"features-{run}", config, extractors=models)
            sync(device)
            if result.failures:
                print(f"failures: {result.failures}")
            return time.perf_counter() - start, time.process_time() - cpu

        # Warm up (allocator, kernels) on two clips, untimed.
        extract_features(jobs()[:2], root / "warmup", config, extractors=models)
        # End to end first, so the peak RSS printed for it does not include the in-memory copy below.
        e2e_times = [end_to_end(0)]
        rss_e2e = peak_rss_mib()
        gpu_e2e = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0

        # Forward only: decode everything and prepare the model inputs first, then time the
        # models on the same batches of clips as the pipeline uses.
        segments = [s for s in (segment_clip(p, c, 0.0, args.seconds, SegmentConfig()) for c, p in paths) if not isinstance(s, Failure)]
        batches = model_batches(models, segments, config.batch_clips, device)

        def forward_only() -> tuple[float, float, float]:
            audio_s = visual_s = 0.0
            cpu = time.process_time()
            with torch.inference_mode():
                for examples, pixels in batches:
                    sync(device)
                    start = time.perf_counter()
                    models.batched(models.audio, examples, 128)
                    sync(device)
                    middle = time.perf_counter()
                    models.batched(models.visual.backbone, pixels, models.visual.dim)
                    sync(device)
                    audio_s, visual_s = audio_s + middle - start, visual_s + time.perf_counter() - middle
            return audio_s, visual_s, time.process_time() - cpu

        # Alternate the two measurements; the best of each damps noise from other load.
        forward_times = [forward_only()]
        for run in range(1, args.repeats):
            e2e_times.append(end_to_end(run))
            forward_times.append(forward_only())
        audio_s, visual_s, forward_cpu = min(forward_times, key=lambda t: t[0] + t[1])
        forward = audio_s + visual_s
        end_to_end_s, end_to_end_cpu = min(e2e_times)
        n_examples = sum(len(e) for e, _ in batches)
        n_frames = sum(len(p) for _, p in batches)

    n_clips = len(segments)
    print(f"forward only : audio {n_examples / audio_s:8.1f} examples/s, visual {n_frames / visual_s:8.1f} frames/s, "
          f"{n_clips / forward:6.2f} clips/s ({forward:.1f} s, best of {args.repeats}, for {n_clips} clips, {n_examples} examples, {n_frames} frames)")
    print(f"end to end   : {n_clips / end_to_end_s:6.2f} clips/s ({end_to_end_s:.1f} s, from MP4 to shards, "
          f"best of {args.repeats} runs)")
    ratio = forward / end_to_end_s
    print(f"ratio end-to-end / forward-only: {ratio:.2f} (target >= 0.80); the pipeline adds {1 - ratio:.0%} around the models")
    print(f"same ratio in process CPU time: {forward_cpu / end_to_end_cpu:.2f} ({forward_cpu:.1f} s / {end_to_end_cpu:.1f} s); "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes share them)")
    print(f"peak RSS: {rss_e2e:.0f} MiB after end-to-end, {peak_rss_mib():.0f} MiB after forward-only "
          f"(which holds all decoded clips)" + (f"; peak CUDA allocated {gpu_e2e:.0f} MiB" if gpu_e2e else ""))


if __name__ == "__main__":
    main()
