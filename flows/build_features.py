"""``build-features``: manifest -> acquisition -> segmentation -> extraction -> feature shards.

    python -m flows.build_features --demo-clips 120 --weights random      # the demo videos
    python -m flows.build_features --manifest ave.parquet --out outputs    # your manifest
    python -m flows.build_features ... --task-runner dask --dask-workers 2  # scale out

Tasks map over shards of clips (``clips_per_shard`` manifest rows each), never one task per
clip. Each task's cache key hashes its rows, its config and the source of the modules that
compute it; results persist beside the outputs (``<out>/.prefect-results``), so a re-run
with the same inputs is Cached and does no work. The feature set lands in
``<out>/features/<key>/shards/`` with the key a hash of the manifest, the configs and the
code, so a changed config lands beside the old set. Keys hold each source file's content
(sha256, kept with size and mtime in ``<out>/media/sources.json`` so re-runs read no video
bytes), never path strings: a file changed, fixed or added in place recomputes exactly the
shards that hold it, and moved data or outputs reuse the finished shards. Only the cheap tasks
whose results hold paths (demo videos, acquisition) also key on their resolved locations.
A per-shard file lock and write-then-rename make a killed run resumable and two concurrent
runs safe: a shard is done exactly when its record (``done/<shard>.json``:
the task's key and the shard's sha256) is written, last, and still matches; a shard whose
bytes no longer match its record is rebuilt. The flow ends Failed when no clip was extracted,
and its final message says how many of the clips failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.common import VISUAL_MODELS, add_runner_arguments
from pipeline.io.errors import add_debug_argument, user_errors


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.build_features",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", type=Path, help="manifest Parquet file (default: the demo videos)")
    source.add_argument("--demo-clips", type=int, default=120, help="demo clips to generate when no manifest is given")
    parser.add_argument("--demo-seconds", type=float, default=10.0, help="length of each demo clip")
    parser.add_argument("--out", type=Path, help="output root (default: $HSCMAE_OUTPUTS, else ./outputs)")
    parser.add_argument("--clips-per-shard", type=int, default=16)
    parser.add_argument("--weights", choices=("published", "random"), default="published",
                        help="extractor weights: the published files (torch hub cache) or random (flagged as such)")
    parser.add_argument("--audio-weights", help="VGGish weights file (overrides --weights)")
    parser.add_argument("--visual-weights", help="visual model weights file (overrides --weights)")
    parser.add_argument("--visual-model", default="resnet50", choices=VISUAL_MODELS, help="frame extractor")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--root", type=Path, help="folder that relative file sources are relative to")
    parser.add_argument("--archive", type=Path, help="zip or folder holding archive sources")
    add_runner_arguments(parser)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Bad paths or values: one ``error:`` line and exit 2 (light: no torch, no Prefect)."""
    from flows.checks import check_build_features

    with user_errors(args.debug):
        check_build_features(args.manifest, root=args.root, archive=args.archive, clips_per_shard=args.clips_per_shard,
                             demo_clips=args.demo_clips, demo_seconds=args.demo_seconds)
    return args


if __name__ == "__main__":  # --help, argument errors and bad input answer before torch and Prefect load
    CHECKED = check_arguments(parse_arguments())

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from functools import partial  # noqa: E402

from typing import Annotated  # noqa: E402

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from filelock import FileLock  # noqa: E402
from prefect import flow, task  # noqa: E402
from pydantic import Field  # noqa: E402
from pydantic.json_schema import SkipJsonSchema  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.futures import PrefectFuture, as_completed  # noqa: E402
from prefect.runtime import task_run  # noqa: E402
from prefect.states import Completed, Failed  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from extractors.extract import ClipJob, ExtractConfig, Extractors, extract_features  # noqa: E402
from flows.params import AcquireSettings, DemoSettings, ExtractSettings, SegmentSettings  # noqa: E402
from flows.progress import Progress  # noqa: E402
from flows.common import (apply_verbosity, check_flow_parameters, digest, frame_digest, key_of, link_dir, output_root,  # noqa: E402
                          results_dir, runner_from_arguments, short, source_digest, task_runner)
from pipeline.media.acquire import (AcquireConfig, acquire, availability_failures, available_sources,  # noqa: E402
                              content_path)
from pipeline.io.atomic import atomic_path  # noqa: E402
from pipeline.datasets.demo_videos import LABELS_FILE, DemoConfig, write_demo  # noqa: E402
from pipeline.io.digest import sha256_file  # noqa: E402
from pipeline.features.failures import Failure, failures_frame, read_failures, write_failures  # noqa: E402
from pipeline.datasets.folder import SplitConfig, build_folder_manifest  # noqa: E402
from pipeline.datasets.schema import manifest_root, read_manifest, write_manifest  # noqa: E402
from pipeline.media.segment import SegmentConfig, segment_clip  # noqa: E402
from pipeline.media.source_index import SourceIndex  # noqa: E402
from pipeline.media.youtube import TRANSIENT  # noqa: E402

ACQUIRE_CODE = ("pipeline.media.acquire", "pipeline.media.youtube")
EXTRACT_CODE = ("pipeline.media.segment", "pipeline.media.decode", "extractors")
DEMO_CODE = ("pipeline.datasets.demo_videos",)
ACQUIRE_RETRIES = 3


class TransientAcquireError(RuntimeError):
    """Some sources failed for a reason that may pass (network); the task is retried with backoff."""


@dataclass(frozen=True)
class AcquireJob:
    """One shard's acquisition: its manifest rows and where downloads go (``config.cache_dir``)."""

    key: str
    index: int
    rows: pd.DataFrame
    config: AcquireConfig
    lock: Path


@dataclass(frozen=True)
class ExtractJob:
    """One shard's segmentation and extraction into ``shard`` (its record ``done`` marks it finished)."""

    key: str
    index: int
    rows: pd.DataFrame
    segment: SegmentConfig
    extract: ExtractConfig
    shard: Path
    failures: Path
    done: Path
    work: Path
    lock: Path
    dataset: str


@dataclass
class ShardOutcome:
    """What one extraction task produced; ``reused`` when the shard was found finished on disk."""

    index: int
    shard: Path | None
    clips: int
    extracted: int
    failures: list[Failure]
    reused: bool


@dataclass
class FeatureSetOutcome:
    """The flow's result: the shard folder and the counts of its Markdown summary."""

    shards: Path
    asked: int
    obtained: int
    extracted: int
    failures_by_kind: dict[str, int]
    shard_states: dict[str, int] = field(default_factory=dict)  # Completed / Cached counts
    reused_on_disk: int = 0  # Completed shard tasks that found their shard finished on disk


# --- plain helpers (no Prefect): rows -> clip jobs, models per process -------------------------

def clip_jobs(rows: pd.DataFrame, availability: pd.DataFrame, segment: SegmentConfig) -> list[ClipJob]:
    """Clip jobs for the rows whose source is available; each job's loader cuts its clip."""
    paths, offsets = available_sources(availability)
    jobs = []
    for row in rows.itertuples(index=False):
        if row.clip_id not in paths:
            continue  # acquisition recorded why
        offset = offsets.get(row.clip_id, 0.0)
        load = partial(segment_clip, paths[row.clip_id], row.clip_id, max(0.0, row.clip_start_s - offset),
                       row.clip_end_s - offset, segment)
        jobs.append(ClipJob(clip_id=row.clip_id, label=row.label, label_id=int(row.label_id), split=row.split,
                            load=load))
    return jobs


_MODELS: dict[ExtractConfig, Extractors] = {}
_MODELS_LOCK = threading.Lock()


def models_for(config: ExtractConfig) -> Extractors:
    """The extractors of ``config``, built once per process (tasks of one worker share them)."""
    key = replace(config, clips_per_shard=1)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = Extractors(config)
        return _MODELS[key]


def extract_cache_config(config: ExtractConfig) -> dict[str, object]:
    """The parts of ``config`` that decide the features (weights files by content, not path)."""
    decides = {name: getattr(config, name) for name in ("visual_model", "audio_postprocess", "seed")}
    for name in ("audio_weights", "pca_weights", "visual_weights"):
        value = getattr(config, name)
        decides[name] = sha256_file(value) if value not in (None, "random") else value
    return decides


def shard_done(job: ExtractJob) -> bool:
    """Whether the shard on disk is this job's finished work: its record names ``job.key`` and the shard's sha256."""
    try:
        record = json.loads(job.done.read_text())
    except (OSError, ValueError):
        return False
    shard = sha256_file(job.shard) if job.shard.exists() else None
    return record.get("key") == job.key and record.get("shard_sha256") == shard and job.failures.exists()


# --- tasks ------------------------------------------------------------------------------------

@task(name="demo-videos", task_run_name="demo-videos", cache_policy=key_of("key"), persist_result=True)
def demo_videos(key: str, clips: int, config: DemoConfig, folder: Path) -> Path:
    """Write the demo clips (real MP4s) under ``folder`` and return it."""
    write_demo(folder, clips, config=config)
    return folder


@task(name="acquire-shard", task_run_name="acquire-shard-{job.index:05d}", retries=ACQUIRE_RETRIES,
      retry_delay_seconds=exponential_backoff(backoff_factor=10),
      retry_jitter_factor=0.5, cache_policy=key_of("job"), persist_result=True)
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
def extract_shard(job: ExtractJob, availability: pd.DataFrame) -> ShardOutcome:
    """Segment and extract the shard's clips into one Parquet shard, unless it is already on disk."""
    obtained = availability_failures(availability)
    with FileLock(job.lock):
        if shard_done(job):  # the record is written last, so the shard is complete and current
            return _outcome(job, read_failures(job.failures), reused=True)
        jobs = clip_jobs(job.rows, availability, job.segment)
        shutil.rmtree(job.work, ignore_errors=True)  # a killed run's leftovers
        job.shard.unlink(missing_ok=True)  # stale or damaged: never reused
        result = extract_features(jobs, job.work, replace(job.extract, clips_per_shard=max(1, len(jobs))),
                                  extractors=models_for(job.extract), extra_meta={"dataset": job.dataset})
        if result.shards:
            job.shard.parent.mkdir(parents=True, exist_ok=True)
            os.replace(result.shards[0], job.shard)
        shutil.rmtree(job.work, ignore_errors=True)
        write_failures(job.failures, obtained + result.failures)
        with atomic_path(job.done) as tmp:
            tmp.write_text(json.dumps({"key": job.key, "shard_sha256": sha256_file(job.shard)
                                       if job.shard.exists() else None}))
    return _outcome(job, obtained + result.failures, reused=False)


def _outcome(job: ExtractJob, failures: list[Failure], *, reused: bool) -> ShardOutcome:
    shard = job.shard if job.shard.exists() else None
    extracted = pq.ParquetFile(shard).metadata.num_rows if shard is not None else 0
    return ShardOutcome(job.index, shard, len(job.rows), extracted, failures, reused=reused)


# --- the flow ---------------------------------------------------------------------------------

def _manifest(manifest: Path | None, demo: DemoConfig, demo_clips: int, out: Path) -> tuple[pd.DataFrame, str]:
    """The manifest to build from, and its dataset name: a file, or the demo videos (made once)."""
    if manifest is not None:
        frame = read_manifest(manifest)
        return frame, str(frame["dataset"].iloc[0])
    content = digest("demo", demo_clips, demo, source_digest(*DEMO_CODE))
    folder = (out / "demo" / short(content)).resolve()
    # the cached result is the folder's path, so the key holds it: a moved output root regenerates
    folder = demo_videos.with_options(result_storage=results_dir(out))(
        digest(content, str(folder)), demo_clips, demo, folder)
    # the demo's own splits, with no val carved here: small demo sets have too few train clips per class
    built = build_folder_manifest(folder / LABELS_FILE, dataset="demo", times="event",
                                  splitting=SplitConfig(val_fraction=0.0))
    return built.frame, "demo"


def watch_shards(futures: list[PrefectFuture[ShardOutcome]], *, clips: int, progress: Progress) -> None:
    """As shards finish: "shards k/N, clips k/M, failed F" in ``progress`` (the flow's one progress
    artifact, made before the manifest, which may generate demo videos first) and its terminal bar."""
    progress.restart(len(futures), f"shards 0/{len(futures)}, clips 0/{clips}, failed 0")
    shards = done = failed = 0
    for future in as_completed(futures):
        shards += 1
        if not future.state.is_failed():
            outcome = future.result()
            done, failed = done + outcome.clips, failed + outcome.clips - outcome.extracted
        progress.update(shards, f"shards {shards}/{len(futures)}, clips {done}/{clips}, failed {failed}")


def _summary(outcome: FeatureSetOutcome, extract: ExtractConfig) -> str:
    weights = {name: getattr(extract, name) or "published" for name in ("audio_weights", "visual_weights")}
    random_note = " **Random extractor weights: these features say nothing about real performance.**" \
        if "random" in weights.values() else ""
    kinds = "\n".join(f"| {kind} | {n} |" for kind, n in sorted(outcome.failures_by_kind.items())) or "| (none) | 0 |"
    return (f"## Feature set\n\n`{outcome.shards}`\n\nExtractors: VGGish ({weights['audio_weights']} weights), "
            f"{extract.visual_model} ({weights['visual_weights']} weights).{random_note}\n\n"
            f"| clips | count |\n|---|---|\n| asked for | {outcome.asked} |\n| obtained | {outcome.obtained} |\n"
            f"| extracted | {outcome.extracted} |\n| failed | {outcome.asked - outcome.extracted} |\n\n"
            f"| failure kind | records |\n|---|---|\n{kinds}\n")


@flow(name="build-features", log_prints=True, task_runner=task_runner("thread"))
def build_features(
    manifest: Path | SkipJsonSchema[None] = None,
    demo_clips: Annotated[int, Field(ge=1, le=100_000)] = 120,
    demo: DemoSettings = DemoSettings(),
    out: Path | SkipJsonSchema[None] = None,
    clips_per_shard: Annotated[int, Field(ge=1, le=100_000)] = 16,
    acquire_config: AcquireSettings = AcquireSettings(),
    segment: SegmentSettings = SegmentSettings(),
    extract: ExtractSettings = ExtractSettings(),
) -> FeatureSetOutcome:
    """Build a feature set from ``manifest`` (or ``demo_clips`` generated demo videos) under ``out``.

    Args:
        manifest: a manifest Parquet file (``pipeline.datasets.manifest``); empty builds the demo videos.
        demo_clips: number of demo clips when ``manifest`` is empty; ``demo`` shapes them.
        out: output root (empty: ``$HSCMAE_OUTPUTS``, else ``./outputs``): ``features/<key>/``, ``media/``, ``demo/``.
        clips_per_shard: manifest rows per task and per shard.
        acquire_config: where sources are read from (downloads go to ``out/media/<key>``).
        segment, extract: segmentation and extraction settings (weights: a path, empty = published, "random").
    """
    out = output_root(out)
    demo, segment = demo.to_config(), segment.to_config()
    extract, acquire_config = extract.to_config(clips_per_shard), acquire_config.to_config(Path("."))
    # one progress artifact for the whole run: it says what comes first, then counts shards to 100 %
    with Progress(1, key="build-features-progress", unit="shard",
                  text=f"generating {demo_clips} demo videos; shards follow" if manifest is None
                  else "reading the manifest; shards follow") as progress:
        frame, dataset = _manifest(manifest, demo, demo_clips, out)
        set_key = digest("features", frame_digest(frame), clips_per_shard, segment, extract_cache_config(extract),
                         source_digest(*EXTRACT_CODE))
        root = out / "features" / short(set_key)
        write_manifest(frame, root / "manifest.parquet")
        acquire_code, storage = source_digest(*ACQUIRE_CODE), results_dir(out)
        acquire_task = acquire_shard.with_options(result_storage=storage)
        extract_task = extract_shard.with_options(result_storage=storage)
        # the sources' bytes decide what is acquired (and name its media folder); the availability
        # table holds absolute paths, so the task's key also holds the resolved root, archive and
        # cache dir: moved data or outputs re-acquire (cheap), while extraction keys stay content-only
        acquire_settings = replace(acquire_config, cache_dir=Path("."), root=None, archive=None)
        root_dir = acquire_config.root or manifest_root(frame)
        acquire_config = replace(acquire_config, root=root_dir.resolve() if root_dir is not None else None,
                                 archive=acquire_config.archive.resolve() if acquire_config.archive else None)
        sources = SourceIndex(out / "media" / "sources.json")
        contents = [sources.digest(*found) if found is not None else "" for found in
                    (content_path(row, acquire_config) for row in frame.itertuples(index=False))]
        sources.save()

        futures = []
        for index, start in enumerate(range(0, len(frame), clips_per_shard)):
            rows = frame.iloc[start:start + clips_per_shard].reset_index(drop=True)
            rows_key = digest(frame_digest(rows), contents[start:start + clips_per_shard])
            acquire_key = digest("acquire", rows_key, acquire_settings, acquire_code)
            cache_dir = (out / "media" / short(acquire_key)).resolve()
            located = replace(acquire_config, cache_dir=cache_dir)
            availability = acquire_task.submit(AcquireJob(
                key=digest(acquire_key, str(located.root), str(located.archive), str(cache_dir)), index=index,
                rows=rows, config=located, lock=out / "locks" / f"acquire-{short(acquire_key)}.lock"))
            name = f"shard-{index:05d}"
            job = ExtractJob(
                key=digest("extract", set_key, rows_key), index=index, rows=rows, segment=segment, extract=extract,
                shard=root / "shards" / f"{name}.parquet", failures=root / "failures" / f"{name}.parquet",
                done=root / "done" / f"{name}.json", work=root / "work" / name,
                lock=out / "locks" / f"{short(set_key)}-{name}.lock", dataset=dataset)
            # a shard changed or damaged on disk is rebuilt, whatever Prefect's cache says
            futures.append(extract_task.with_options(refresh_cache=not shard_done(job)).submit(job, availability))

        watch_shards(futures, clips=len(frame), progress=progress)
    outcomes = [f.result() for f in futures]  # in shard order
    fresh = [o for o, f in zip(outcomes, futures) if f.state.name != "Cached"]
    failures = [f for o in outcomes for f in o.failures]
    write_failures(root / "failures.parquet", failures)
    failed_acquire = {f.clip_id for f in failures if f.stage == "acquire"}
    outcome = FeatureSetOutcome(
        shards=root / "shards", asked=len(frame), obtained=len(frame) - len(failed_acquire),
        extracted=sum(o.extracted for o in outcomes), failures_by_kind=dict(Counter(f.kind for f in failures)),
        shard_states=dict(Counter(f.state.name for f in futures)), reused_on_disk=sum(o.reused for o in fresh))
    summary = _summary(outcome, extract)
    with atomic_path(root / "summary.md") as tmp:
        tmp.write_text(summary)
    create_table_artifact(failures_frame(failures).to_dict("records"), key="build-features-failures",
                          description=f"{len(failures)} failure records ({root / 'failures.parquet'})")
    create_markdown_artifact(summary, key="build-features-summary",
                             description="clips asked, obtained, extracted, failed")
    link_dir(outcome.shards, key="build-features-shards", text=f"feature shards ({outcome.extracted} clips)")
    print(f"{outcome.extracted}/{outcome.asked} clips extracted into {outcome.shards}; "
          f"shard tasks {json.dumps(outcome.shard_states)}, reused from disk {outcome.reused_on_disk}")
    message = f"{outcome.asked - outcome.extracted} of {outcome.asked} clips failed"
    if outcome.extracted == 0:
        return Failed(message=f"no clip was extracted: {message} ({json.dumps(outcome.failures_by_kind)}); "
                              f"see {root / 'failures.parquet'}")
    return Completed(message=f"{message}; {outcome.extracted} extracted into {outcome.shards}", data=outcome)


def weights_config(args: argparse.Namespace) -> ExtractConfig:
    """The extraction config of the command-line flags."""
    both = "random" if args.weights == "random" else None
    return ExtractConfig(visual_model=args.visual_model, audio_weights=args.audio_weights or both,
                         visual_weights=args.visual_weights or both, device=args.device)


def main(argv: list[str] | None = None, *, checked: argparse.Namespace | None = None) -> FeatureSetOutcome:
    """The command line: ``argv`` parsed and checked, or ``checked`` when ``__main__`` has done that already."""
    args = checked or check_arguments(parse_arguments(argv))
    apply_verbosity(args)
    parameters = dict(manifest=args.manifest, demo_clips=args.demo_clips, demo=DemoConfig(seconds=args.demo_seconds),
                      out=args.out, clips_per_shard=args.clips_per_shard,
                      acquire_config=AcquireConfig(root=args.root, archive=args.archive), extract=weights_config(args))
    check_flow_parameters(build_features, parameters, debug=args.debug)
    run = build_features.with_options(task_runner=runner_from_arguments(args))
    return run(**parameters)


if __name__ == "__main__":
    # run the importable module's copy, so Dask workers can unpickle its tasks by reference
    from flows.build_features import main as module_main

    module_main(checked=CHECKED)
