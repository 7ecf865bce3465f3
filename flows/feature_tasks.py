"""The tasks of ``build-features`` (``flows.build_features``): demo videos, and per shard acquisition and extraction.

Each is a few calls into the library (``pipeline.features.build``, ``pipeline.media.acquire``,
``extractors.extract``) under Prefect's caching and retries, and a per-shard file lock that keeps
two concurrent runs from building one shard twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock
from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from extractors.config import ExtractConfig
from extractors.extract import extract_one_shard, models_for
from flows.common import key_of
from flows.progress import Progress
from pipeline.datasets.demo_videos import DemoConfig, write_demo
from pipeline.features.build import AcquireJob, ExtractJob, ShardOutcome, clip_jobs, finish_shard, shard_on_disk
from pipeline.io.digest import digest
from pipeline.media.acquire import acquire, source_locations
from pipeline.media.segment import SegmentConfig
from pipeline.media.youtube import TRANSIENT

ACQUIRE_RETRIES = 3


class TransientAcquireError(RuntimeError):
    """Some sources failed for a reason that may pass (network); the task is retried with backoff."""


@task(name="demo-videos", task_run_name="demo-videos", cache_policy=key_of("key"), persist_result=True)
def demo_videos(key: str, clips: int, config: DemoConfig, folder: Path) -> Path:
    """Write the demo clips (real MP4s) under ``folder`` and return it."""
    write_demo(folder, clips, config=config)
    return folder


def acquire_key(_: TaskRunContext, inputs: dict[str, Any]) -> str:
    """The acquisition job's key and where its sources resolve now: a cached result holds paths that were checked
    to stay inside the dataset root, so a source swapped for a symlink since (out of the root, say) is acquired,
    and checked, again."""
    job: AcquireJob = inputs["job"]
    return digest(job.key, source_locations(job.rows, job.config))


@task(name="acquire-shard", task_run_name="acquire-shard-{job.index:05d}", retries=ACQUIRE_RETRIES,
      retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
      cache_policy=CacheKeyFnPolicy(cache_key_fn=acquire_key), persist_result=True)
def acquire_shard(job: AcquireJob) -> pd.DataFrame:
    """Make the shard's sources local; raises (so Prefect retries) while network failures remain."""
    with FileLock(job.lock):
        availability = acquire(job.rows, job.config)
    transient = availability["outcome"].isin(TRANSIENT)
    if transient.any() and task_run.run_count <= ACQUIRE_RETRIES:
        raise TransientAcquireError(f"shard {job.index}: {int(transient.sum())} sources failed transiently "
                                    f"(first: {availability.loc[transient, 'message'].iloc[0]})")
    return availability


@task(name="extract-shard", task_run_name="extract-shard-{job.index:05d}", cache_policy=key_of("job"),
      persist_result=True)
def extract_shard(job: ExtractJob, availability: pd.DataFrame, segment: SegmentConfig,
                  extract: ExtractConfig) -> ShardOutcome:
    """Segment and extract the shard's clips into one Parquet shard, unless it is found finished on disk."""
    with FileLock(job.lock):
        found = shard_on_disk(job, availability)
        if found is not None:
            return found
        failures = extract_one_shard(clip_jobs(job.rows, availability, segment), job.shard, job.work, extract,
                                     extractors=models_for(extract), extra_meta={"dataset": job.dataset})
        return finish_shard(job, availability, failures)


def watch_shards(futures: list[PrefectFuture[ShardOutcome]], *, clips: int, progress: Progress) -> None:
    """As shards finish: "shards k/N, clips k/M, failed F" (and "kept K" shards found on disk whose clips
    cannot be acquired now) in ``progress``, the flow's one progress artifact and its terminal bar."""
    progress.restart(len(futures), f"shards 0/{len(futures)}, clips 0/{clips}, failed 0")
    shards = done = failed = kept = 0
    for future in as_completed(futures):
        shards += 1
        if not future.state.is_failed():
            outcome = future.result()
            done, failed = done + outcome.clips, failed + outcome.clips - outcome.extracted
            kept += bool(outcome.kept)
        note = f", kept {kept} built earlier (sources not available now)" if kept else ""
        progress.update(shards, f"shards {shards}/{len(futures)}, clips {done}/{clips}, failed {failed}{note}")
