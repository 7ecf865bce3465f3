"""Feature shards: one Parquet row per clip with per-second audio and visual features.

Schema (this module owns it): ``clip_id``, ``label``, ``label_id``, ``split``, ``audio``
and ``visual`` as per-second sequences (``list<fixed_size_list<float32, D>>``),
``audio_seconds`` and ``visual_seconds`` (the sequence lengths). The file's schema
metadata, under the key ``hscmae``, is a JSON object with one entry per modality::

    {"audio":  {"extractor": "vggish", "version": "1", "params": {...}, "weights": "<sha256>|random"},
     "visual": {...}, "dataset": "ave", ...}

Shards are written whole or not at all, and every read validates what it returns.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.atomic import atomic_path
from pipeline.io.errors import UserError
from pipeline.vocab import CLIP_ID_PATTERN, MODALITIES, RANDOM_WEIGHTS, SPLITS, is_clip_id

META_KEY = b"hscmae"
REQUIRED_COLUMNS = (
    "clip_id", "label", "label_id", "split", "audio", "visual", "audio_seconds", "visual_seconds",
)
REQUIRED_META = ("extractor", "version", "params", "weights")


class ShardError(UserError):
    """A shard (or the clips meant for one) breaks the contract; the message names file and clip."""


@dataclass
class ClipFeatures:
    """Per-second features of one clip.

    Args:
        audio: ``[Ta, Da]`` float32, one row per second (VGGish example).
        visual: ``[Tv, Dv]`` float32, one row per sampled frame.
    """

    clip_id: str
    label: str
    label_id: int
    split: str
    audio: np.ndarray
    visual: np.ndarray


@dataclass
class FeatureSet:
    """All clips of one or more shards, validated and in shard order.

    ``audio[i]``: ``[Ta_i, Da]``; ``visual[i]``: ``[Tv_i, Dv]``; ``label_id``: ``[N]`` int64.
    """

    clip_id: np.ndarray
    label: np.ndarray
    label_id: np.ndarray
    split: np.ndarray
    audio: list[np.ndarray]
    visual: list[np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clip_id)

    @property
    def dims(self) -> tuple[int, int]:
        """``(Da, Dv)``, the per-second feature sizes."""
        return self.audio[0].shape[1], self.visual[0].shape[1]

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean over seconds: audio ``[N, Da]`` and visual ``[N, Dv]``, float32."""
        audio = np.stack([a.mean(axis=0) for a in self.audio]).astype(np.float32)
        visual = np.stack([v.mean(axis=0) for v in self.visual]).astype(np.float32)
        return audio, visual

    def subset(self, index: np.ndarray) -> FeatureSet:
        """The clips at ``index`` (a boolean mask ``[N]`` or integer positions)."""
        positions = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return FeatureSet(
            clip_id=self.clip_id[positions],
            label=self.label[positions],
            label_id=self.label_id[positions],
            split=self.split[positions],
            audio=[self.audio[i] for i in positions],
            visual=[self.visual[i] for i in positions],
            meta=self.meta,
        )


def uses_random_weights(meta: Mapping[str, Any]) -> bool:
    """True when any modality's extractor ran with random weights."""
    return any(meta.get(m, {}).get("weights") == RANDOM_WEIGHTS for m in MODALITIES)


def weights_summary(meta: Mapping[str, Any]) -> str:
    """A short description for tables, e.g. ``audio vggish (random), visual resnet50 (sha256 1a2b3c4d)``."""
    parts = []
    for m in MODALITIES:
        info = meta.get(m, {})
        weights = info.get("weights", "?")
        is_hash = isinstance(weights, str) and re.fullmatch(r"[0-9a-f]{64}", weights) is not None
        shown = f"sha256 {weights[:8]}" if is_hash else str(weights)
        parts.append(f"{m} {info.get('extractor', '?')} ({shown})")
    return ", ".join(parts)


def _check_meta(meta: Mapping[str, Any], where: str) -> None:
    for m in MODALITIES:
        info = meta.get(m)
        if not isinstance(info, Mapping):
            raise ShardError(f"{where}: metadata has no '{m}' entry (extractor, version, params, weights)")
        missing = [k for k in REQUIRED_META if k not in info]
        if missing:
            raise ShardError(f"{where}: metadata for '{m}' lacks {missing}")


def check_clip(clip: ClipFeatures, where: str, row: int) -> None:
    """Raise :class:`ShardError` naming ``where``, the row and the clip if ``clip`` breaks the contract."""
    at = f"{where}, row {row}, clip {clip.clip_id!r}"
    if not is_clip_id(clip.clip_id):
        raise ShardError(f"{at}: clip_id must match {CLIP_ID_PATTERN.pattern}")
    if clip.label is None or clip.label == "" or clip.label_id is None or int(clip.label_id) < 0:
        raise ShardError(f"{at}: label is absent (label={clip.label!r}, label_id={clip.label_id!r})")
    if clip.split not in SPLITS:
        raise ShardError(f"{at}: split {clip.split!r} is not one of {SPLITS}")
    for name in MODALITIES:
        x = getattr(clip, name)
        if x is None or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            shape = None if x is None else x.shape
            raise ShardError(f"{at}: no {name} features (shape {shape}; expected [seconds>0, D])")
        bad = ~np.isfinite(x)
        if bad.any():
            second = int(np.argwhere(bad)[0][0])
            raise ShardError(f"{at}: {name} has {int(bad.sum())} non-finite values (first at second {second})")


def _sequence_array(arrays: Sequence[np.ndarray], dim: int) -> pa.Array:
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    rows = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets), rows)


def write_shard(path: str | os.PathLike[str], clips: Sequence[ClipFeatures], meta: Mapping[str, Any]) -> Path:
    """Validate ``clips`` and write them as one shard, atomically.

    All clips must share ``Da`` and ``Dv``. Raises :class:`ShardError` before anything is written.
    """
    where = str(path)
    if not clips:
        raise ShardError(f"{where}: a shard needs at least one clip")
    _check_meta(meta, where)
    dims = {}
    seen: set[str] = set()
    for row, clip in enumerate(clips):
        check_clip(clip, where, row)
        if clip.clip_id in seen:
            raise ShardError(f"{where}, row {row}, clip {clip.clip_id!r}: duplicate clip_id")
        seen.add(clip.clip_id)
        for name in MODALITIES:
            d = getattr(clip, name).shape[1]
            if dims.setdefault(name, d) != d:
                raise ShardError(f"{where}, row {row}, clip {clip.clip_id!r}: {name} has {d} dims, earlier clips {dims[name]}")
    table = pa.table({
        "clip_id": pa.array([c.clip_id for c in clips], type=pa.string()),
        "label": pa.array([c.label for c in clips], type=pa.string()),
        "label_id": pa.array([int(c.label_id) for c in clips], type=pa.int32()),
        "split": pa.array([c.split for c in clips], type=pa.string()),
        "audio": _sequence_array([c.audio for c in clips], dims["audio"]),
        "visual": _sequence_array([c.visual for c in clips], dims["visual"]),
        "audio_seconds": pa.array([c.audio.shape[0] for c in clips], type=pa.int32()),
        "visual_seconds": pa.array([c.visual.shape[0] for c in clips], type=pa.int32()),
    })
    table = table.replace_schema_metadata({META_KEY: json.dumps(dict(meta), sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def _sequences(column: pa.ChunkedArray, name: str, where: str) -> list[np.ndarray]:
    array = column.combine_chunks()
    if not pa.types.is_list(array.type) or not pa.types.is_fixed_size_list(array.type.value_type):
        raise ShardError(f"{where}: column '{name}' has type {array.type}, expected list<fixed_size_list<float>>")
    dim = array.type.value_type.list_size
    offsets = array.offsets.to_numpy()
    values = array.values.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    start = array.values.offset * dim
    matrix = values.reshape(-1, dim) if start == 0 else values[start:].reshape(-1, dim)
    return [matrix[offsets[i]:offsets[i + 1]] for i in range(len(array))]


def read_shard(path: str | os.PathLike[str]) -> tuple[list[ClipFeatures], dict[str, Any]]:
    """Read and validate one shard: its clips and its metadata."""
    where = str(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ShardError(f"{where}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ShardError(f"{where}: missing columns {missing}")
    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    if raw_meta is None:
        raise ShardError(f"{where}: no '{META_KEY.decode()}' schema metadata (extractor, weights)")
    meta = json.loads(raw_meta)
    _check_meta(meta, where)
    audio = _sequences(table.column("audio"), "audio", where)
    visual = _sequences(table.column("visual"), "visual", where)
    columns = {c: table.column(c).to_pylist() for c in ("clip_id", "label", "label_id", "split")}
    clips = []
    for row in range(table.num_rows):
        clip = ClipFeatures(
            clip_id=columns["clip_id"][row], label=columns["label"][row],
            label_id=columns["label_id"][row], split=columns["split"][row],
            audio=audio[row], visual=visual[row],
        )
        check_clip(clip, where, row)
        clips.append(clip)
    return clips, meta


def shard_paths(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The shard files named by ``source``: a directory (its ``*.parquet``, sorted) or a list of files."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        paths = sorted(root.glob("*.parquet")) if root.is_dir() else [root]
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise ShardError(f"{source}: no shard files (*.parquet) found")
    return paths


def load_feature_set(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> FeatureSet:
    """Read every shard of ``source`` into one validated :class:`FeatureSet`.

    Shards must agree on metadata and feature sizes, and clip ids must be unique across them.
    """
    clips: list[ClipFeatures] = []
    meta: dict[str, Any] | None = None
    origin: dict[str, Path] = {}
    for path in shard_paths(source):
        shard_clips, shard_meta = read_shard(path)
        if meta is None:
            meta, first = shard_meta, path
        elif shard_meta != meta:
            raise ShardError(f"{path}: metadata differs from {first} (different extractor or weights)")
        for row, clip in enumerate(shard_clips):
            if clip.clip_id in origin:
                raise ShardError(f"{path}, row {row}, clip {clip.clip_id!r}: duplicate clip_id (also in {origin[clip.clip_id]})")
            origin[clip.clip_id] = path
            if clips and (clip.audio.shape[1], clip.visual.shape[1]) != (clips[0].audio.shape[1], clips[0].visual.shape[1]):
                raise ShardError(f"{path}, row {row}, clip {clip.clip_id!r}: feature sizes differ from earlier shards")
        clips.extend(shard_clips)
    return FeatureSet(
        clip_id=np.array([c.clip_id for c in clips], dtype=object),
        label=np.array([c.label for c in clips], dtype=object),
        label_id=np.array([c.label_id for c in clips], dtype=np.int64),
        split=np.array([c.split for c in clips], dtype=object),
        audio=[c.audio for c in clips],
        visual=[c.visual for c in clips],
        meta=meta or {},
    )


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
