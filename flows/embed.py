"""``embed``: a trained run + feature shards (or raw videos) -> Parquet shards of per-clip embeddings.

    python -m flows.embed --run runs/run-<hash> --features outputs/features/<key>/shards --out emb/
    python -m flows.embed --run runs/run-<hash> --method hscmae --seed 1 --videos my_clips/ --out emb/

One task per feature shard writes ``<out>/embeddings-<nnnnn>.parquet`` (``hscmae.embeddings``: clip_id,
label, split, audio and visual vectors; the checkpoint's sha256 and the model config in the metadata).
The flow's ``out`` defaults to ``embeddings/`` under the output root (``flows.common.output_root``).
A task's cache key hashes the feature shard's bytes, the checkpoint's bytes, the method config and the
embedding code (plus the output path), so a re-run is Cached. ``--videos`` (a folder of class folders or
a labels CSV) first runs ``build-features`` with the run's extractor (model, weights) into ``<out>/build``;
the new shards' extractor metadata must equal the run's. Search the result with ``python -m hscmae.search``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.io.errors import add_debug_argument, user_errors


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.embed",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--run", required=True, type=Path, help="a train-eval run directory")
    parser.add_argument("--method", default="hscmae", help="which method of the run (default hscmae)")
    parser.add_argument("--seed", type=int, default=0, help="which seed of the method (default 0)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", type=Path, help="feature shards (folder or file) to embed")
    source.add_argument("--videos", type=Path, help="videos to extract first: class folders or a labels CSV")
    parser.add_argument("--out", required=True, type=Path, help="embedding folder to write")
    parser.add_argument("--times", choices=("clip", "event"), default="clip",
                        help="with --videos and a labels CSV: its start/end cut each clip (clip), or mark the event "
                             "in the whole file (event: as the demo set's labels.csv)")
    parser.add_argument("--posthoc-cca", action="store_true", help="apply the run's post-hoc CCA")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The run, its checkpoint and the inputs: one ``error:`` line and exit 2 before any heavy work."""
    from pipeline.features.shards import check_shards
    from pipeline.io.errors import UserError, require_dir, require_file

    with user_errors(args.debug):
        require_dir(args.run, "run directory (--run)")
        if args.features is not None:
            check_shards(args.features)
        elif not args.videos.exists():
            raise UserError(f"{args.videos}: no such folder or labels CSV (--videos)")
        from hscmae.checkpoint import BEST, checkpoint_dir  # torch: only once the paths are known to be there
        from hscmae.embeddings import run_method_config

        run_method_config(args.run, args.method)
        require_file(checkpoint_dir(args.run, args.method, args.seed) / BEST,
                     f"checkpoint of {args.method} seed {args.seed}")
    return args


if __name__ == "__main__":  # --help, argument errors and bad input answer before torch and Prefect load
    CHECKED = check_arguments(parse_arguments())

import functools  # noqa: E402
import json  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Literal  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
from prefect import flow, task  # noqa: E402

from flows.cli import check_flow_parameters, run_flow  # noqa: E402
from flows.common import key_of, output_root, results_dir  # noqa: E402
from hscmae.checkpoint import BEST, checkpoint_dir  # noqa: E402
from hscmae.embeddings import (SHARD_PATTERN, Embedder, embed_shard, load_embedder,  # noqa: E402
                               run_method_config)
from pipeline.features.shards import load_feature_set, read_shard, shard_paths  # noqa: E402
from pipeline.io.digest import digest, sha256_file, source_digest  # noqa: E402

SHARD_NAME = "embeddings-{:05d}.parquet"


@dataclass(frozen=True)
class EmbedJob:
    """One feature shard to embed into ``out``; ``key`` is its cache key."""

    key: str
    run_dir: Path
    method: str
    seed: int
    posthoc: bool
    dims: tuple[tuple[str, int], ...]
    shard: Path
    out: Path


@dataclass
class EmbedOutcome:
    """The flow's result: the embedding folder, its shards and clip count."""

    out: Path
    shards: list[Path]
    clips: int
    task_states: dict[str, int]


@functools.lru_cache(maxsize=4)
def _embedder(run_dir: Path, method: str, seed: int, dims: tuple[tuple[str, int], ...], posthoc: bool) -> Embedder:
    """The run's selected model, loaded once per process and shared by its shard tasks, not once per shard."""
    return load_embedder(run_method_config(run_dir, method), checkpoint_dir(run_dir, method, seed), dict(dims),
                         seed=seed, posthoc=posthoc)


@task(name="embed-shard", task_run_name="{job.shard.stem}", cache_policy=key_of("job"), persist_result=True)
def embed_job(job: EmbedJob) -> Path:
    """Embed one feature shard with the job's selected model; returns the embedding shard written."""
    return embed_shard(_embedder(job.run_dir, job.method, job.seed, job.dims, job.posthoc), job.shard, job.out)


def run_features_meta(run_dir: Path) -> dict[str, Any]:
    """The extractor metadata of the feature shards ``run_dir`` was trained on."""
    config = json.loads((run_dir / "config.json").read_text())
    return read_shard(shard_paths(config["experiment"]["shards"])[0])[1]


def features_from_videos(run_dir: Path, videos: Path, out: Path, times: Literal["clip", "event"] = "clip") -> Path:
    """Run ``build-features`` on ``videos`` (``times``: see :func:`new_videos_manifest`) with the run's extractor;
    returns the new shard folder."""
    # the extractors load only on this path: embedding feature shards needs none
    from extractors.config import differing_extractors, extract_config_of
    from flows.build_features import build_features
    from pipeline.datasets.new_videos import new_videos_manifest
    from pipeline.datasets.schema import write_manifest

    meta = run_features_meta(run_dir)
    manifest = write_manifest(new_videos_manifest(videos, out / "build", times), out / "build" / "manifest.parquet")
    result = build_features(manifest=manifest, out=out / "build", extract=extract_config_of(meta))
    made = read_shard(shard_paths(result.shards)[0])[1]
    differs = differing_extractors(made, meta)
    if differs:
        raise ValueError(f"{videos}: {differs} features differ from the run's ({made[differs[0]]} vs "
                         f"{meta[differs[0]]}); put the run's weights where build-features finds them")
    return result.shards


@flow(name="embed", log_prints=True)
def embed(run: Path, features: Path | None = None, out: Path | None = None, method: str = "hscmae",
          seed: int = 0, posthoc_cca: bool = False, videos: Path | None = None,
          times: Literal["clip", "event"] = "clip") -> EmbedOutcome:
    """Embed every clip of ``features`` (or of ``videos``) with ``method`` x ``seed`` of the run ``run``.

    Args:
        run: a train-eval run directory; features: its kind of feature shards (folder or file).
        out: the embedding folder (empty: ``embeddings/`` under the output root); method, seed: which
            selected model of the run.
        posthoc_cca: apply the run's post-hoc CCA (trainable methods only).
        videos: a class-folder tree or labels CSV to extract first (instead of ``features``); times: whether
            the CSV's start/end cut each clip or mark the event in the whole file.
    """
    run_dir = Path(run).resolve()
    out = Path(out).resolve() if out is not None else output_root() / "embeddings"
    config = run_method_config(run_dir, method)
    weights = checkpoint_dir(run_dir, method, seed) / BEST
    if not weights.is_file():
        raise ValueError(f"{weights}: no such checkpoint (method {method!r}, seed {seed})")
    source = features_from_videos(run_dir, Path(videos), out, times) if videos is not None else Path(features)
    shards = shard_paths(source)
    dims = tuple(zip(("audio", "visual"), load_feature_set(shards[:1]).dims))
    code = source_digest("hscmae", "pipeline.features.shards")
    jobs = [EmbedJob(key=digest("embed", sha256_file(shard), sha256_file(weights), config.to_dict(), seed,
                                posthoc_cca, code, str(out / SHARD_NAME.format(i))),
                     run_dir=run_dir, method=method, seed=seed, posthoc=posthoc_cca, dims=dims, shard=shard,
                     out=out / SHARD_NAME.format(i))
            for i, shard in enumerate(shards)]
    futures = [embed_job.with_options(result_storage=results_dir(out)).submit(job) for job in jobs]
    written = [f.result() for f in futures]
    for stale in set(out.glob(SHARD_PATTERN)) - set(written):  # left by an earlier, larger feature set
        stale.unlink()
    clips = sum(pq.ParquetFile(p).metadata.num_rows for p in written)
    states = dict(Counter(future.state.name for future in futures))
    print(f"{clips} clips embedded by {method} seed {seed} into {out}; shard tasks {states}")
    return EmbedOutcome(out=out, shards=written, clips=clips, task_states=states)


def main(argv: list[str] | None = None, *, checked: argparse.Namespace | None = None) -> EmbedOutcome:
    """The command line: ``argv`` parsed and checked, or ``checked`` when ``__main__`` has done that already."""
    args = checked or check_arguments(parse_arguments(argv))
    parameters = dict(run=args.run, features=args.features, out=args.out, method=args.method, seed=args.seed,
                      posthoc_cca=args.posthoc_cca, videos=args.videos, times=args.times)
    check_flow_parameters(embed, parameters, debug=args.debug)
    return run_flow(embed, parameters, debug=args.debug)


if __name__ == "__main__":
    # run the importable module's copy, as the other flows do
    from flows.embed import main as module_main

    module_main(checked=CHECKED)
