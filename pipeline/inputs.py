"""Checks of a command line's input files, run before Prefect starts or a model loads.

Each raises a :class:`pipeline.errors.UserError` whose message names the file (and the line
or row) and what is wrong, so :func:`pipeline.errors.user_errors` turns it into one
``error:`` line and exit status 2 within a second or two, not a traceback after the start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from pipeline.errors import UserError, require_dir, require_file, require_positive
from pipeline.manifest_schema import read_manifest
from pipeline.shards import META_KEY, ShardError, shard_paths


def check_shards(source: str | os.PathLike[str]) -> list[Path]:
    """The shard files of ``source`` (a folder or one file), each with a readable Parquet footer and metadata.

    Reads footers only (fast), so a truncated or foreign file is named before any training starts.
    """
    source = Path(source)
    if not source.exists():
        raise ShardError(f"{source}: no such feature shard folder or file")
    paths = shard_paths(source)
    for path in paths:
        try:
            schema = pq.ParquetFile(path).schema_arrow
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise ShardError(f"{path}: not a readable Parquet shard, truncated or damaged? "
                             f"({' '.join(str(exc).split())})") from None
        if not schema.metadata or META_KEY not in schema.metadata:
            raise ShardError(f"{path}: not a feature shard (no '{META_KEY.decode()}' schema metadata)")
    return paths


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a JSON or YAML config file; an unreadable file or a non-mapping is a :class:`UserError`."""
    path = require_file(path, "config file")
    try:
        text = path.read_text()
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                        f"({' '.join(str(exc).split())})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: an experiment config must be a mapping of settings, got {type(loaded).__name__}")
    return loaded


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
