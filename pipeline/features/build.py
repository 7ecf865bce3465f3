"""Building a feature set, without Prefect or models: its key and per-shard jobs, clip jobs, shard records, the report.

``flows.build_features`` submits the jobs planned here (:func:`plan_feature_set`) and, per shard,
runs the extractors (``extractors.extract.extract_one_shard``) on :func:`clip_jobs`. A feature set
lives in ``<out>/features/<key>/`` (docs/outputs.md), ``<key>`` a hash of the manifest, the configs
and the code. Keys hold each source file's content (kept with size and mtime in
``<out>/media/sources.json`` so re-runs read no video bytes), never path strings: a file changed,
fixed or added in place recomputes exactly the shards that hold it, and moved data or outputs reuse
the finished shards. Only acquisition, whose result holds paths, also keys on resolved locations.

A shard is done exactly when its record (``done/<shard>.json``: the job's key, the shard's sha256
and the file each clip was read from) is written, last, and still matches; a shard whose bytes no
longer match its record is rebuilt. A finished shard is never deleted because some of its clips
cannot be acquired now (data moved or unmounted): it is kept as it is, and the report says so.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipeline.datasets.schema import manifest_root
from pipeline.features.failures import Failure, read_failures, write_failures
from pipeline.io.atomic import atomic_path
from pipeline.io.digest import digest, frame_digest, sha256_file, short, source_digest
from pipeline.media.acquire import STAGE as ACQUIRE_STAGE
from pipeline.media.acquire import AcquireConfig, availability_failures, available_sources, content_path
from pipeline.media.segment import ClipJob, SegmentConfig, local_window, segment_clip
from pipeline.media.source_index import SourceIndex
from pipeline.vocab import PUBLISHED_WEIGHTS, RANDOM_WEIGHTS

ACQUIRE_CODE = ("pipeline.media.acquire", "pipeline.media.youtube")
EXTRACT_CODE = ("pipeline.media.segment", "pipeline.media.decode", "extractors")


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
    shard: Path
    failures: Path
    done: Path
    work: Path
    lock: Path
    dataset: str


@dataclass(frozen=True)
class FeatureSetPlan:
    """A feature set's key, its folder, and one acquisition and one extraction job per shard (in order)."""

    key: str
    root: Path
    acquire: list[AcquireJob]
    extract: list[ExtractJob]


@dataclass
class ShardOutcome:
    """What one extraction task produced.

    ``failures`` are segmentation and extraction records (acquisition's come from the availability
    table); ``sources`` the local file each extracted clip was read from; ``reused`` when the shard
    was found finished on disk; ``kept`` the clips of such a shard whose sources cannot be acquired now.
    """

    index: int
    shard: Path | None
    clips: int
    extracted: int
    failures: list[Failure]
    sources: dict[str, str]
    reused: bool
    kept: tuple[str, ...] = ()


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
    kept_shards: int = 0  # shards kept as built earlier: some of their clips cannot be acquired now
    kept_clips: dict[str, int] = field(default_factory=dict)  # those clips, by acquisition failure kind

    def failed_text(self) -> str:
        """``"F of N clips failed"``: clips asked for that are in no shard."""
        return f"{self.asked - self.extracted} of {self.asked} clips failed"

    def log_text(self) -> str:
        """The run's one log line: clips extracted, shard task states, shards reused and kept."""
        kept = f"; {self.kept_text()}" if self.kept_shards else ""
        return (f"{self.extracted}/{self.asked} clips extracted into {self.shards}; shard tasks "
                f"{json.dumps(self.shard_states)}, reused from disk {self.reused_on_disk}{kept}")

    def kept_text(self) -> str:
        """What was kept and why, in one sentence; "" when nothing was."""
        if not self.kept_shards:
            return ""
        why = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kept_clips.items()))
        return (f"kept {self.kept_shards} shards built earlier as they are: {sum(self.kept_clips.values())} of "
                f"their clips cannot be acquired now ({why}), and a shard is never rebuilt without them")


def clip_jobs(rows: pd.DataFrame, availability: pd.DataFrame, segment: SegmentConfig) -> list[ClipJob]:
    """Clip jobs for the rows whose source is available, in row order; each job's loader cuts its clip
    (the row's clip range as :func:`pipeline.media.segment.local_window` places it in the local file)."""
    paths, offsets = available_sources(availability)
    jobs = []
    for row in rows.itertuples(index=False):
        if row.clip_id not in paths:
            continue  # acquisition recorded why
        start, end = local_window(row.clip_start_s, row.clip_end_s, offsets.get(row.clip_id, 0.0))
        load = partial(segment_clip, paths[row.clip_id], row.clip_id, start, end, segment)
        jobs.append(ClipJob(clip_id=row.clip_id, label=row.label, label_id=int(row.label_id), split=row.split,
                            load=load))
    return jobs


def plan_feature_set(frame: pd.DataFrame, *, dataset: str, out: Path, clips_per_shard: int, segment: SegmentConfig,
                     extractor: Mapping[str, Any], acquire: AcquireConfig) -> FeatureSetPlan:
    """The feature set of manifest ``frame`` under the output root ``out``, in shards of ``clips_per_shard`` rows.

    Args:
        dataset: the name the shards' metadata records.
        extractor: what of the extraction config decides the features (``extract_cache_config``).
        acquire: where sources are read from; downloads go to ``out/media/<key>``, whatever its ``cache_dir``.

    Reads each source's sha256 through (and updates) ``out/media/sources.json``.
    """
    set_key = digest("features", frame_digest(frame), clips_per_shard, segment, dict(extractor),
                     source_digest(*EXTRACT_CODE))
    root = out / "features" / short(set_key)
    acquire_code = source_digest(*ACQUIRE_CODE)
    # the sources' bytes decide what is acquired (and name its media folder); the availability
    # table holds absolute paths, so the task's key also holds the resolved root, archive and
    # cache dir: moved data or outputs re-acquire (cheap), while extraction keys stay content-only
    acquire_settings = replace(acquire, cache_dir=Path("."), root=None, archive=None)
    root_dir = acquire.root or manifest_root(frame)
    acquire = replace(acquire, root=root_dir.resolve() if root_dir is not None else None,
                      archive=acquire.archive.resolve() if acquire.archive else None)
    sources = SourceIndex(out / "media" / "sources.json")
    contents = [sources.digest(*found) if found is not None else "" for found in
                (content_path(row, acquire) for row in frame.itertuples(index=False))]
    sources.save()
    plan = FeatureSetPlan(key=set_key, root=root, acquire=[], extract=[])
    for index, start in enumerate(range(0, len(frame), clips_per_shard)):
        rows = frame.iloc[start:start + clips_per_shard].reset_index(drop=True)
        rows_key = digest(frame_digest(rows), contents[start:start + clips_per_shard])
        acquire_key = digest("acquire", rows_key, acquire_settings, acquire_code)
        cache_dir = (out / "media" / short(acquire_key)).resolve()
        located = replace(acquire, cache_dir=cache_dir)
        plan.acquire.append(AcquireJob(
            key=digest(acquire_key, str(located.root), str(located.archive), str(cache_dir)), index=index,
            rows=rows, config=located, lock=out / "locks" / f"acquire-{short(acquire_key)}.lock"))
        name = f"shard-{index:05d}"
        plan.extract.append(ExtractJob(
            key=digest("extract", set_key, rows_key), index=index, rows=rows,
            shard=root / "shards" / f"{name}.parquet", failures=root / "failures" / f"{name}.parquet",
            done=root / "done" / f"{name}.json", work=root / "work" / name,
            lock=out / "locks" / f"{short(set_key)}-{name}.lock", dataset=dataset))
    return plan


def _record(job: ExtractJob) -> dict[str, Any]:
    """The shard's record, or {} when there is none (or a damaged one)."""
    try:
        return json.loads(job.done.read_text())
    except (OSError, ValueError):
        return {}


def _shard_sha256(job: ExtractJob) -> str | None:
    return sha256_file(job.shard) if job.shard.exists() else None


def _is_done(job: ExtractJob, record: Mapping[str, Any], shard_sha256: str | None) -> bool:
    return record.get("key") == job.key and record.get("shard_sha256") == shard_sha256 and job.failures.exists()


def shard_done(job: ExtractJob) -> bool:
    """Whether the shard on disk is this job's finished work: its record names ``job.key`` and the shard's sha256."""
    return _is_done(job, _record(job), _shard_sha256(job))


def _outcome(job: ExtractJob, failures: list[Failure], record: Mapping[str, Any], *, reused: bool,
             kept: tuple[str, ...] = ()) -> ShardOutcome:
    shard = job.shard if job.shard.exists() else None
    extracted = pq.ParquetFile(shard).metadata.num_rows if shard is not None else 0
    return ShardOutcome(job.index, shard, len(job.rows), extracted, failures, dict(record.get("sources", {})),
                        reused=reused, kept=kept)


def _recorded_failures(job: ExtractJob) -> list[Failure]:
    """The shard's segmentation and extraction failure records (acquisition's are read afresh each run)."""
    found = read_failures(job.failures) if job.failures.exists() else []
    return [f for f in found if f.stage != ACQUIRE_STAGE]


def shard_on_disk(job: ExtractJob, availability: pd.DataFrame) -> ShardOutcome | None:
    """The outcome of ``job``'s shard when it is found finished on disk, else None (build it).

    Found: done by this job (:func:`shard_done`), or finished by an earlier run of the same feature
    set (its record's sha256 still matches the file) and holding clips whose sources ``availability``
    cannot provide now. Rebuilding that shard would delete their features, so it is kept as it is;
    the outcome's ``kept`` names those clips.
    """
    record, shard_sha256 = _record(job), _shard_sha256(job)
    if _is_done(job, record, shard_sha256):
        return _outcome(job, _recorded_failures(job), record, reused=True)
    if shard_sha256 is None or record.get("shard_sha256") != shard_sha256:
        return None
    available = available_sources(availability)[0]
    held = pq.read_table(job.shard, columns=["clip_id"]).column("clip_id").to_pylist()
    kept = tuple(clip_id for clip_id in held if clip_id not in available)
    return _outcome(job, _recorded_failures(job), record, reused=True, kept=kept) if kept else None


def finish_shard(job: ExtractJob, availability: pd.DataFrame, failures: list[Failure]) -> ShardOutcome:
    """Record the shard just extracted from ``availability``'s sources with segmentation and extraction
    ``failures``: its failure records, then, last, its record (which marks it finished)."""
    write_failures(job.failures, availability_failures(availability) + failures)
    record = {"key": job.key, "shard_sha256": _shard_sha256(job), "sources": available_sources(availability)[0]}
    with atomic_path(job.done) as tmp:
        tmp.write_text(json.dumps(record))
    return _outcome(job, failures, record, reused=False)


def relocate(failures: Sequence[Failure], was: Mapping[str, str], now: Mapping[str, str]) -> list[Failure]:
    """``failures`` with the file each clip was read from (``was[clip_id]``) named, wherever its message names
    it, as the file it is read from now (``now[clip_id]``); clips with no file now are left as recorded."""
    moved = []
    for failure in failures:
        old, new = was.get(failure.clip_id), now.get(failure.clip_id)
        if old and new:
            failure = replace(failure, message=failure.message.replace(old, new))
        moved.append(failure)
    return moved


def feature_set_outcome(root: Path, outcomes: Sequence[ShardOutcome], availabilities: Sequence[pd.DataFrame],
                        states: Sequence[str]) -> tuple[FeatureSetOutcome, list[Failure]]:
    """The set's counts and failure records, in shard order, from each shard's outcome, its availability
    table of this run and its task's final state name (``Completed``, ``Cached``).

    A shard's records are its acquisition failures as acquired now, then its segmentation and extraction
    failures naming where each clip's file is now: a finished shard found on disk (or in Prefect's
    cache) after the data moved never reports the old paths.
    """
    failures: list[Failure] = []
    kept: Counter[str] = Counter()
    for outcome, availability in zip(outcomes, availabilities):
        acquired = availability_failures(availability)
        failures += acquired + relocate(outcome.failures, outcome.sources, available_sources(availability)[0])
        why = {f.clip_id: f.kind for f in acquired}  # a kept clip is one that acquisition failed
        kept.update(why[clip_id] for clip_id in outcome.kept)
    failed_acquire = {f.clip_id for f in failures if f.stage == ACQUIRE_STAGE}
    asked = sum(o.clips for o in outcomes)
    fresh = [o for o, state in zip(outcomes, states) if state != "Cached"]
    outcome = FeatureSetOutcome(
        shards=root / "shards", asked=asked, obtained=asked - len(failed_acquire),
        extracted=sum(o.extracted for o in outcomes), failures_by_kind=dict(Counter(f.kind for f in failures)),
        shard_states=dict(Counter(states)), reused_on_disk=sum(o.reused for o in fresh),
        kept_shards=sum(bool(o.kept) for o in outcomes), kept_clips=dict(kept))
    return outcome, failures


def summary_markdown(outcome: FeatureSetOutcome, *, visual_model: str, audio_weights: str | None,
                     visual_weights: str | None) -> str:
    """The feature set's Markdown summary: extractors and their weights (a file, or ``None`` for the
    published one), clip counts, failure kinds, and what was kept from earlier runs."""
    weights = {"audio": audio_weights or PUBLISHED_WEIGHTS, "visual": visual_weights or PUBLISHED_WEIGHTS}
    random_note = " **Random extractor weights: these features say nothing about real performance.**" \
        if RANDOM_WEIGHTS in weights.values() else ""
    kinds = "\n".join(f"| {kind} | {n} |" for kind, n in sorted(outcome.failures_by_kind.items())) or "| (none) | 0 |"
    kept = f"\n**Kept:** {outcome.kept_text()}. Restore the sources, or rebuild the manifest where they are now, " \
           "to refresh those shards.\n" if outcome.kept_shards else ""
    return (f"## Feature set\n\n`{outcome.shards}`\n\nExtractors: VGGish ({weights['audio']} weights), "
            f"{visual_model} ({weights['visual']} weights).{random_note}\n\n"
            f"| clips | count |\n|---|---|\n| asked for | {outcome.asked} |\n| obtained | {outcome.obtained} |\n"
            f"| extracted | {outcome.extracted} |\n| failed | {outcome.asked - outcome.extracted} |\n\n"
            f"| failure kind | records |\n|---|---|\n{kinds}\n{kept}")


def write_report(outcome: FeatureSetOutcome, failures: Sequence[Failure], summary: str) -> Path:
    """Write the set's ``failures.parquet`` and ``summary.md`` beside its shards; returns the failures file."""
    root = outcome.shards.parent
    path = write_failures(root / "failures.parquet", list(failures))
    with atomic_path(root / "summary.md") as tmp:
        tmp.write_text(summary)
    return path
