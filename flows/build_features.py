"""``build-features``: manifest -> acquisition -> segmentation -> extraction -> feature shards.

    python -m flows.build_features --demo-clips 120 --weights random      # the demo videos
    python -m flows.build_features --manifest ave.parquet --out outputs    # your manifest
    python -m flows.build_features ... --task-runner dask --dask-workers 2  # scale out

Tasks map over shards of clips (``clips_per_shard`` manifest rows each), never one task per
clip. The flow picks the manifest, submits one acquisition and one extraction task per shard as
``pipeline.features.build`` plans them (keys, folders, shard records: read its docstring), and
reports. Each task's cache key hashes its rows' content, its config and the source of the modules
that compute it; results persist beside the outputs (``<out>/.prefect-results``), so a re-run
with the same inputs is Cached and does no work, and a changed config lands beside the old set in
``<out>/features/<key>/shards/``. Only the cheap tasks whose results hold paths (demo videos,
acquisition) also key on their resolved locations. A per-shard file lock and write-then-rename make
a killed run resumable and two concurrent runs safe. A finished shard whose clips cannot be acquired
now (moved data, old manifest) is kept, and the run says so. No clip extracted: the flow ends Failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

from pydantic import Field

from extractors.registry import VISUAL_MODEL_NAMES
from flows.cli import add_runner_arguments, check_runner_arguments
from pipeline.io.errors import add_debug_argument, user_errors
from pipeline.vocab import PUBLISHED_WEIGHTS, RANDOM_WEIGHTS, WEIGHTS_CHOICES

Count = Annotated[int, Field(ge=1, le=100_000)]  # the flow's counts; check_arguments checks the same bounds


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
    parser.add_argument("--weights", choices=WEIGHTS_CHOICES, default=PUBLISHED_WEIGHTS,
                        help="extractor weights: the published files (torch hub cache) or random (flagged as such)")
    parser.add_argument("--audio-weights", help="VGGish weights file (overrides --weights)")
    parser.add_argument("--visual-weights", help="visual model weights file (overrides --weights)")
    parser.add_argument("--visual-model", default="resnet50", choices=VISUAL_MODEL_NAMES, help="frame extractor")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--root", type=Path, help="folder that relative file sources are relative to")
    parser.add_argument("--archive", type=Path, help="zip or folder holding archive sources")
    add_runner_arguments(parser)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def chosen_weights(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The ``(audio, visual)`` weights of the flags: a file, ``RANDOM_WEIGHTS``, or ``None`` (the published file)."""
    both = RANDOM_WEIGHTS if args.weights == RANDOM_WEIGHTS else None
    return args.audio_weights or both, args.visual_weights or both


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Bad paths, values or missing weight files: one ``error:`` line and exit 2 (light: no torch, no Prefect)."""
    from flows.checks import check_build_features, check_form, check_weights
    from flows.params import DemoSettings

    with user_errors(args.debug):
        check_runner_arguments(args)
        check_form("build-features", {"demo_clips": (Count, args.demo_clips),
                                      "clips_per_shard": (Count, args.clips_per_shard),
                                      "demo": (DemoSettings, {"seconds": args.demo_seconds})})
        check_build_features(args.manifest, root=args.root, archive=args.archive)
        audio, visual = chosen_weights(args)
        check_weights(args.visual_model, audio=audio, visual=visual)
    return args


if __name__ == "__main__":  # --help, argument errors and bad input answer before torch and Prefect load
    CHECKED = check_arguments(parse_arguments())

import json  # noqa: E402

import pandas as pd  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.states import Completed, Failed  # noqa: E402

from extractors.config import ExtractConfig, extract_cache_config  # noqa: E402
from flows.cli import apply_verbosity, check_flow_parameters, run_flow, runner_from_arguments  # noqa: E402
from flows.common import link_dir, output_root, results_dir  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from flows.feature_tasks import acquire_shard, demo_videos, extract_shard, watch_shards  # noqa: E402
from flows.params import AcquireSettings, DemoSettings, ExtractSettings, SegmentSettings  # noqa: E402
from flows.progress import Progress  # noqa: E402
from pipeline.datasets.demo_videos import LABELS_FILE, DemoConfig  # noqa: E402
from pipeline.datasets.folder import SplitConfig, build_folder_manifest  # noqa: E402
from pipeline.datasets.schema import read_manifest, write_manifest  # noqa: E402
from pipeline.features.build import (FeatureSetOutcome, feature_set_outcome, plan_feature_set,  # noqa: E402
                                     shard_done, summary_markdown, write_report)
from pipeline.features.failures import failures_frame  # noqa: E402
from pipeline.io.digest import digest, short, source_digest  # noqa: E402
from pipeline.media.acquire import AcquireConfig  # noqa: E402

def _manifest(manifest: Path | None, demo: DemoConfig, demo_clips: int, out: Path) -> tuple[pd.DataFrame, str]:
    """The manifest to build from, and its dataset name: a file, or the demo videos (made once)."""
    if manifest is not None:
        frame = read_manifest(manifest)
        return frame, str(frame["dataset"].iloc[0])
    content = digest("demo", demo_clips, demo, source_digest("pipeline.datasets.demo_videos"))  # the code it follows
    folder = (out / "demo" / short(content)).resolve()
    # the cached result is the folder's path, so the key holds it: a moved output root regenerates
    folder = demo_videos.with_options(result_storage=results_dir(out))(
        digest(content, str(folder)), demo_clips, demo, folder)
    # the demo's own splits, with no val carved here: small demo sets have too few train clips per class
    built = build_folder_manifest(folder / LABELS_FILE, dataset="demo", times="event",
                                  splitting=SplitConfig(val_fraction=0.0))
    return built.frame, "demo"


@flow(name="build-features", log_prints=True, task_runner=task_runner("thread"))
def build_features(
    manifest: Path | None = None,
    demo_clips: Count = 120,
    demo: DemoSettings = DemoSettings(),
    out: Path | None = None,
    clips_per_shard: Count = 16,
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
        plan = plan_feature_set(frame, dataset=dataset, out=out, clips_per_shard=clips_per_shard, segment=segment,
                                extractor=extract_cache_config(extract), acquire=acquire_config)
        write_manifest(frame, plan.root / "manifest.parquet")
        storage = results_dir(out)
        acquire_task = acquire_shard.with_options(result_storage=storage)
        extract_task = extract_shard.with_options(result_storage=storage)
        acquired, futures = [acquire_task.submit(job) for job in plan.acquire], []
        for job, availability in zip(plan.extract, acquired):
            # a shard changed or damaged on disk is rebuilt, whatever Prefect's cache says
            rebuilt = extract_task.with_options(refresh_cache=not shard_done(job))
            futures.append(rebuilt.submit(job, availability, segment, extract))
        watch_shards(futures, clips=len(frame), progress=progress)
    outcome, failures = feature_set_outcome(plan.root, [f.result() for f in futures], [a.result() for a in acquired],
                                            [f.state.name for f in futures])
    summary = summary_markdown(outcome, visual_model=extract.visual_model, audio_weights=extract.audio_weights,
                               visual_weights=extract.visual_weights)
    failures_file = write_report(outcome, failures, summary)
    create_table_artifact(failures_frame(failures).to_dict("records"), key="build-features-failures",
                          description=f"{len(failures)} failure records ({failures_file})")
    create_markdown_artifact(summary, key="build-features-summary",
                             description="clips asked, obtained, extracted, failed")
    link_dir(outcome.shards, key="build-features-shards", text=f"feature shards ({outcome.extracted} clips)")
    print(outcome.log_text())
    if outcome.extracted == 0:
        return Failed(message=f"no clip was extracted: {outcome.failed_text()} "
                              f"({json.dumps(outcome.failures_by_kind)}); see {failures_file}")
    return Completed(message=f"{outcome.failed_text()}; {outcome.extracted} extracted into {outcome.shards}",
                     data=outcome)


def main(argv: list[str] | None = None, *, checked: argparse.Namespace | None = None) -> FeatureSetOutcome:
    """The command line: ``argv`` parsed and checked, or ``checked`` when ``__main__`` has done that already."""
    args = checked or check_arguments(parse_arguments(argv))
    apply_verbosity(args)
    audio, visual = chosen_weights(args)
    extract = ExtractConfig(visual_model=args.visual_model, audio_weights=audio, visual_weights=visual,
                            device=args.device)
    parameters = dict(manifest=args.manifest, demo_clips=args.demo_clips, demo=DemoConfig(seconds=args.demo_seconds),
                      out=args.out, clips_per_shard=args.clips_per_shard,
                      acquire_config=AcquireConfig(root=args.root, archive=args.archive), extract=extract)
    check_flow_parameters(build_features, parameters, debug=args.debug)
    return run_flow(build_features.with_options(task_runner=runner_from_arguments(args)), parameters, debug=args.debug)


if __name__ == "__main__":
    # run the importable module's copy, so Dask workers can unpickle its tasks by reference
    from flows.build_features import main as module_main

    module_main(checked=CHECKED)
