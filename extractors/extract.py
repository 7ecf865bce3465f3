"""Batched feature extraction: clip jobs in, Parquet feature shards and failure records out.

Clips are decoded by a thread pool a bounded number of clips ahead of the models, so decoding
overlaps compute; the models see batches of several clips (all their 0.96 s audio examples in
one VGGish batch, all their frames in one visual batch); finished clips are written as shards
of ``clips_per_shard`` clips, atomically (or all into one given file, :func:`extract_one_shard`).
Memory stays bounded whatever the number of clips.
Extractors know clip jobs and segments (``pipeline.media.segment``), never manifests or flows.

How features are extracted is :class:`extractors.config.ExtractConfig` (torch-free, with what of it
decides the features); the models are built once per process (:func:`models_for`).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from extractors import vggish_params as vp
from extractors.config import ExtractConfig
from extractors.logmel import num_examples
from extractors.vggish import AudioExtractor, build_audio
from extractors.visual import VisualExtractor, build_visual
from pipeline.features.failures import Failure
from pipeline.features.shards import ClipFeatures, write_shard
from pipeline.media.segment import ClipJob, Segment
from pipeline.vocab import CLIP_ID_PATTERN, SPLITS, is_clip_id

STAGE = "extract"


@dataclass
class ExtractResult:
    """The shards written (in order) and every clip that did not become a row."""

    shards: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class Extractors:
    """The audio and visual extractors on one device, with batched forward passes."""

    def __init__(self, config: ExtractConfig = ExtractConfig()) -> None:
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp = config.amp and self.device.type == "cuda"
        self.max_batch = config.max_batch
        self.audio: AudioExtractor = build_audio(
            weights=config.audio_weights, pca_weights=config.pca_weights,
            postprocess=config.audio_postprocess, seed=config.seed,
        ).to(self.device)
        self.visual: VisualExtractor = build_visual(
            config.visual_model, weights=config.visual_weights, seed=config.seed).to(self.device)

    def meta(self) -> dict[str, Any]:
        """Shard metadata: ``{"audio": {...}, "visual": {...}}``."""
        return {"audio": self.audio.meta(), "visual": self.visual.meta()}

    def batched(self, model: torch.nn.Module, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``model`` over ``x: [N, ...]`` in chunks of ``max_batch`` -> ``[N, dim]`` float32."""
        if len(x) == 0:
            return torch.empty(0, dim, device=x.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            return torch.cat([model(chunk).float() for chunk in x.split(self.max_batch)])

    @torch.inference_mode()
    def features(self, segments: Sequence[Segment]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per clip: audio ``[E_i, 128]`` and visual ``[T_i, D]``, one row per second (a 0.96 s example starting on it, the frame at its middle)."""
        waves = [torch.from_numpy(np.asarray(s.audio, dtype=np.float32)).to(self.device) for s in segments]
        examples, audio_counts = self.audio.frontend.examples(waves)  # float32, outside autocast
        audio = self.batched(self.audio, examples, vp.EMBEDDING_SIZE).cpu().numpy()
        frames = torch.from_numpy(np.concatenate([s.frames for s in segments])).to(self.device)
        visual = self.batched(self.visual, frames, self.visual.dim).cpu().numpy()
        frame_counts = [len(s.frames) for s in segments]
        audio_parts = np.split(audio, np.cumsum(audio_counts)[:-1])
        visual_parts = np.split(visual, np.cumsum(frame_counts)[:-1])
        return list(zip(audio_parts, visual_parts))


_MODELS: dict[ExtractConfig, Extractors] = {}
_MODELS_LOCK = threading.Lock()


def models_for(config: ExtractConfig) -> Extractors:
    """The extractors of ``config``, built once per process (tasks of one worker share them)."""
    key = replace(config, clips_per_shard=1)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = Extractors(config)
        return _MODELS[key]


def _check_job(job: ClipJob) -> None:
    if not is_clip_id(job.clip_id):
        raise ValueError(f"clip job {job.clip_id!r}: clip_id must match {CLIP_ID_PATTERN.pattern}")
    if job.split not in SPLITS:
        raise ValueError(f"clip job {job.clip_id!r}: split {job.split!r} is not one of {SPLITS}")


def _media_failure(job: ClipJob, segment: Segment) -> Failure | None:
    """Why a decoded segment cannot be extracted, or None."""
    def fail(kind: str, message: str) -> Failure:
        return Failure(clip_id=job.clip_id, stage=STAGE, kind=kind, message=message)

    if segment.sample_rate != vp.SAMPLE_RATE:
        return fail("wrong_sample_rate", f"audio at {segment.sample_rate} Hz; VGGish needs {vp.SAMPLE_RATE} Hz")
    if segment.frames.ndim != 4 or segment.frames.shape[-1] != 3 or segment.frames.dtype != np.uint8:
        return fail("bad_frames", f"frames {segment.frames.dtype}{list(segment.frames.shape)}; expected uint8 [T, H, W, 3]")
    if len(segment.frames) == 0:
        return fail("no_frames", "no frames to embed")
    if num_examples(len(segment.audio)) == 0:
        return fail("too_short", f"{len(segment.audio) / vp.SAMPLE_RATE:.3f} s of audio is less than one "
                                 f"{vp.EXAMPLE_WINDOW_SECONDS} s VGGish example")
    return None


def _feature_failure(job: ClipJob, name: str, x: np.ndarray) -> Failure | None:
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    second = int(np.argwhere(bad)[0][0])
    return Failure(clip_id=job.clip_id, stage=STAGE, kind="non_finite",
                   message=f"{name} features have {int(bad.sum())} non-finite values (first at second {second})")


def prefetch(jobs: Iterable[ClipJob], workers: int, depth: int) -> Iterator[tuple[ClipJob, Segment | Failure]]:
    """``(job, job.load())`` in job order, decoded by ``workers`` threads up to ``depth`` clips ahead."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
    pending: deque[tuple[ClipJob, Future[Segment | Failure]]] = deque()
    try:
        for job in jobs:
            pending.append((job, pool.submit(job.load)))
            if len(pending) >= depth:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _ShardWriter:
    def __init__(self, out_dir: Path, clips_per_shard: int, meta: Mapping[str, Any]) -> None:
        self.out_dir, self.size, self.meta = out_dir, clips_per_shard, dict(meta)
        self.pending: list[ClipFeatures] = []
        self.written: list[Path] = []

    def add(self, clip: ClipFeatures) -> None:
        self.pending.append(clip)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            path = self.out_dir / f"shard-{len(self.written):05d}.parquet"
            self.written.append(write_shard(path, self.pending, self.meta))
            self.pending = []


def extract_features(
    jobs: Iterable[ClipJob],
    out_dir: str | os.PathLike[str],
    config: ExtractConfig = ExtractConfig(),
    *,
    extractors: Extractors | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    total: int | None = None,
) -> ExtractResult:
    """Extract every job's features into ``out_dir/shard-NNNNN.parquet``.

    Args:
        jobs: clip jobs, consumed lazily (a generator is fine).
        out_dir: shard folder (its own: shards are numbered from 0 and replace same-named files).
        config: extraction settings; ignored for the models when ``extractors`` is given.
        extra_meta: more shard metadata (e.g. ``{"dataset": "ave"}``).
        total: number of jobs, for the progress bar when ``jobs`` has no ``len``.

    Returns:
        The shard paths and the failures: those the jobs' loaders returned, plus clips that are
        too short, duplicated, or whose features are not finite (stage ``extract``).
    """
    models = extractors or Extractors(config)
    writer = _ShardWriter(Path(out_dir), config.clips_per_shard, {**(extra_meta or {}), **models.meta()})
    result = ExtractResult(shards=writer.written)
    seen: set[str] = set()
    batch: list[tuple[ClipJob, Segment]] = []

    def run_batch() -> None:
        for (job, _), (audio, visual) in zip(batch, models.features([s for _, s in batch])):
            failure = _feature_failure(job, "audio", audio) or _feature_failure(job, "visual", visual)
            if failure is not None:
                result.failures.append(failure)
                continue
            writer.add(ClipFeatures(clip_id=job.clip_id, label=job.label, label_id=int(job.label_id),
                                    split=job.split, audio=audio, visual=visual))
        batch.clear()

    def fresh(stream: Iterable[ClipJob]) -> Iterator[ClipJob]:
        for job in stream:
            _check_job(job)
            if job.clip_id in seen:
                result.failures.append(Failure(clip_id=job.clip_id, stage=STAGE, kind="duplicate_clip_id",
                                               message="clip_id already extracted in this run; later copy skipped"))
                progress.update(1)
                continue
            seen.add(job.clip_id)
            yield job

    count = total if total is not None else (len(jobs) if isinstance(jobs, Sized) else None)
    with tqdm(total=count, desc="extract", unit="clip", disable=None) as progress:  # None: off unless a terminal
        for job, loaded in prefetch(fresh(jobs), config.decode_workers, config.prefetch_clips):
            progress.update(1)
            failure = loaded if isinstance(loaded, Failure) else _media_failure(job, loaded)
            if failure is not None:
                result.failures.append(failure)
                continue
            batch.append((job, loaded))
            if len(batch) >= config.batch_clips:
                run_batch()
        if batch:
            run_batch()
    writer.flush()
    return result


def extract_one_shard(
    jobs: Sequence[ClipJob],
    shard: Path,
    work: Path,
    config: ExtractConfig,
    *,
    extractors: Extractors | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> list[Failure]:
    """Extract ``jobs`` into the one shard file ``shard``, through the scratch folder ``work``.

    Afterwards ``shard`` holds the features of every clip that succeeded, or does not exist when none
    did (a file already there is removed first, never reused), and ``work`` (with a killed run's
    leftovers) is gone. Returns the failures, as :func:`extract_features` does.
    """
    shard.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    result = extract_features(jobs, work, replace(config, clips_per_shard=max(1, len(jobs))),
                              extractors=extractors, extra_meta=extra_meta)
    if result.shards:
        shard.parent.mkdir(parents=True, exist_ok=True)
        os.replace(result.shards[0], shard)
    shutil.rmtree(work, ignore_errors=True)
    return result.failures
