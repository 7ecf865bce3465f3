"""Checks of the flows' command-line inputs, run before Prefect starts or a model loads.

Each raises a :class:`pipeline.io.errors.UserError` whose message names the file (and the line
or row) and what is wrong, so :func:`pipeline.io.errors.user_errors` turns it into one
``error:`` line and exit status 2 within a second or two, not a traceback after the start-up.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.datasets.schema import read_manifest
from pipeline.features.shards import check_shards
from pipeline.io.config_file import read_config_file
from pipeline.io.errors import UserError, require_dir, require_positive


def check_build_features(manifest: Path | None, *, root: Path | None, archive: Path | None,
                         clips_per_shard: int, demo_clips: int, demo_seconds: float) -> None:
    """Arguments of ``flows.build_features``: the manifest valid, folders present, counts positive."""
    if manifest is not None:
        read_manifest(manifest)
    if root is not None:
        require_dir(root, "dataset root (--root)")
    if archive is not None and not Path(archive).exists():
        raise UserError(f"{archive}: no such archive (--archive)")
    require_positive("--clips-per-shard", clips_per_shard)
    require_positive("--demo-clips", demo_clips)
    require_positive("--demo-seconds", demo_seconds)


def check_train_eval(features: Path | None, config: Path | None, *, seeds: list[int] | None,
                     epochs: int | None) -> None:
    """Arguments of ``flows.train_eval``: shards readable, the config file a mapping, numbers in range."""
    if features is not None:
        check_shards(features)
    if config is not None:
        shards = read_config_file(config).get("shards")
        if features is None and shards:
            check_shards(shards)
    require_positive("--epochs", epochs)
    if seeds is not None and any(s < 0 for s in seeds):
        raise UserError(f"--seeds: must be >= 0, got {seeds}")


def check_demo(clips: int, seconds: float, seeds: list[int], epochs: int | None) -> None:
    """Arguments of ``flows.demo``: counts and lengths positive."""
    require_positive("--clips", clips)
    require_positive("--seconds", seconds)
    require_positive("--epochs", epochs)
    if any(s < 0 for s in seeds):
        raise UserError(f"--seeds: must be >= 0, got {seeds}")
