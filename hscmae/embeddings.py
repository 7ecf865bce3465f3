"""Per-clip embeddings of a trained run: load the selected model, embed clips, read and write shards.

An embedding shard is a Parquet file with one row per clip: ``clip_id``, ``label``, ``label_id``
(null when unknown), ``split`` and ``audio``/``visual`` as ``fixed_size_list<float32, L>``. Its schema
metadata under :data:`META_KEY` is a JSON object naming where the vectors come from::

    {"method": "hscmae", "seed": 0, "checkpoint": "<path>", "checkpoint_sha256": "<hex>",
     "posthoc_cca": false, "model": {<MethodConfig.to_dict()>}, "features": {<feature shard metadata>}}

Models are loaded only through the run's own files: ``config.json`` (the resolved method configs),
``checkpoints/<method>-seed<s>/best.safetensors`` (``hscmae.checkpoint``) and, when asked, its post-hoc
CCA; trainable methods embed through :func:`hscmae.inference.embed`, linear CCA through its transforms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hscmae.checkpoint import BEST, POSTHOC_CCA
from hscmae.config import MethodConfig
from hscmae.data import ClipArrays
from pipeline.io.atomic import atomic_path
from pipeline.io.digest import sha256_file
from pipeline.io.errors import UserError
from pipeline.vocab import MODALITIES

META_KEY = b"hscmae-embeddings"
SHARD_PATTERN = "embeddings-*.parquet"


class EmbeddingError(UserError):
    """An embedding folder, shard or run breaks the contract; the message names the file."""


@dataclass
class Embeddings:
    """Embeddings of ``N`` clips: ``audio``, ``visual``: ``[N, L]`` float32; ``label_id``: ``[N]`` (-1 unknown)."""

    clip_id: np.ndarray
    label: np.ndarray
    label_id: np.ndarray
    split: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clip_id)


@dataclass
class Embedder:
    """The selected model of one method x seed of a run, ready to embed clips."""

    method: MethodConfig
    seed: int
    checkpoint: Path
    dims: dict[str, int]  # feature size per modality the model takes
    model: Any  # HSCMAE or LinearCCA
    posthoc: Any = None  # LinearCCA fit on the train embeddings, or None

    def embed(self, clips: ClipArrays) -> tuple[np.ndarray, np.ndarray]:
        """``(audio [N, L], visual [N, L])`` float32 output embeddings of ``clips``."""
        if self.method.kind == "closed_form":
            audio, visual = self.model.embed(*clips.pooled())
            return audio.astype(np.float32), visual.astype(np.float32)
        from hscmae.inference import embed

        audio, visual = embed(self.model, clips)
        if self.posthoc is not None:
            audio, visual = self.posthoc.embed(audio, visual)
        return audio.astype(np.float32), visual.astype(np.float32)

    def meta(self, features: dict[str, Any]) -> dict[str, Any]:
        """The metadata an embedding shard of this model carries (``features``: the feature shards' metadata)."""
        return {"method": self.method.name, "seed": self.seed, "checkpoint": str(self.checkpoint),
                "checkpoint_sha256": sha256_file(self.checkpoint), "posthoc_cca": self.posthoc is not None,
                "model": self.method.to_dict(), "features": features}


def run_method_config(run_dir: str | os.PathLike[str], method: str) -> MethodConfig:
    """The resolved config of ``method`` recorded in ``run_dir/config.json``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise EmbeddingError(f"{path}: no such file (is {run_dir} a train-eval run directory?)")
    methods = json.loads(path.read_text()).get("methods", {})
    if method not in methods:
        raise EmbeddingError(f"{path}: the run has no method {method!r} (it has {sorted(methods)})")
    return MethodConfig.from_dict(methods[method])


def load_embedder(method: MethodConfig, folder: str | os.PathLike[str], dims: dict[str, int], *, seed: int,
                  posthoc: bool = False) -> Embedder:
    """Load ``folder/best.safetensors`` (and its post-hoc CCA when ``posthoc``) for inputs of ``dims``.

    Args:
        method: the method's resolved config (``run_method_config``).
        dims: feature size per modality of the clips to embed, e.g. ``{"audio": 128, "visual": 2048}``.
    """
    from hscmae.cca import LinearCCA

    folder = Path(folder)
    best = folder / BEST
    if not best.is_file():
        raise EmbeddingError(f"{best}: no such checkpoint")
    if method.kind == "closed_form":
        model = LinearCCA.load(str(best))
        found = {"audio": model.mean_x.shape[0], "visual": model.mean_y.shape[0]}
    else:
        from hscmae.checkpoint import load_module
        from hscmae.inference import resolve_device
        from hscmae.model import HSCMAE

        model = HSCMAE(in_dims=dims, config=method.model).to(resolve_device(method.train.device))
        found = dict(dims)
        try:
            load_module(best, model)
        except RuntimeError as exc:
            raise EmbeddingError(f"{best}: does not fit {method.name} on features of sizes {dims} ({exc})") from exc
        model.eval()
    if found != dims:
        raise EmbeddingError(f"{best}: made for feature sizes {found}, the clips have {dims}")
    extra = None
    if posthoc:
        path = folder / POSTHOC_CCA
        if not path.is_file():
            raise EmbeddingError(f"{path}: no post-hoc CCA saved for this run")
        extra = LinearCCA.load(str(path))
    return Embedder(method=method, seed=seed, checkpoint=best, dims=dict(dims), model=model, posthoc=extra)


def _column(vectors: np.ndarray) -> pa.Array:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1])


def write_embeddings(path: str | os.PathLike[str], emb: Embeddings) -> Path:
    """Write ``emb`` as one embedding shard, atomically."""
    n = len(emb)
    if emb.audio.shape[0] != n or emb.visual.shape[0] != n or emb.audio.ndim != 2 or emb.visual.ndim != 2:
        raise EmbeddingError(f"{path}: expected audio and visual [N={n}, L], got {emb.audio.shape}, {emb.visual.shape}")
    label_id = [None if int(x) < 0 else int(x) for x in emb.label_id]
    table = pa.table({
        "clip_id": pa.array([str(c) for c in emb.clip_id], type=pa.string()),
        "label": pa.array([None if x is None else str(x) for x in emb.label], type=pa.string()),
        "label_id": pa.array(label_id, type=pa.int32()),
        "split": pa.array([None if x is None else str(x) for x in emb.split], type=pa.string()),
        "audio": _column(emb.audio),
        "visual": _column(emb.visual),
    }).replace_schema_metadata({META_KEY: json.dumps(emb.meta, sort_keys=True, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def _vectors(table: pa.Table, name: str, where: str) -> np.ndarray:
    column = table.column(name).combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise EmbeddingError(f"{where}: column {name!r} has type {column.type}, expected fixed_size_list<float>")
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), column.type.list_size)


def read_embeddings(source: str | os.PathLike[str]) -> Embeddings:
    """Read an embedding folder (every ``embeddings-*.parquet``, sorted by name) or one shard file."""
    root = Path(source)
    paths = sorted(root.glob(SHARD_PATTERN)) if root.is_dir() else [root]
    if not root.exists() or not paths:
        raise EmbeddingError(f"{source}: no embedding shards ({SHARD_PATTERN})")
    parts, meta = [], None
    for path in paths:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise EmbeddingError(f"{path}: not a readable Parquet file ({exc})") from exc
        raw = (table.schema.metadata or {}).get(META_KEY)
        missing = [c for c in ("clip_id", "label", "label_id", "split", *MODALITIES) if c not in table.column_names]
        if raw is None or missing:
            raise EmbeddingError(f"{path}: not an embedding shard (missing {missing or 'its metadata'})")
        shard_meta = json.loads(raw)
        if meta is not None and shard_meta != meta:
            raise EmbeddingError(f"{path}: metadata differs from {paths[0]} (another model or checkpoint)")
        meta = shard_meta
        label_id = table.column("label_id").to_numpy(zero_copy_only=False)
        parts.append(dict(
            clip_id=np.array(table.column("clip_id").to_pylist(), dtype=object),
            label=np.array(table.column("label").to_pylist(), dtype=object),
            label_id=np.nan_to_num(label_id.astype(np.float64), nan=-1).astype(np.int64),
            split=np.array(table.column("split").to_pylist(), dtype=object),
            audio=_vectors(table, "audio", str(path)), visual=_vectors(table, "visual", str(path))))
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    dims = {joined["audio"].shape[1], joined["visual"].shape[1]}
    if len(dims) != 1:
        raise EmbeddingError(f"{source}: audio and visual embeddings differ in size ({sorted(dims)})")
    ids, counts = np.unique(joined["clip_id"].astype(str), return_counts=True)
    if (counts > 1).any():
        raise EmbeddingError(f"{source}: clip_id {ids[counts > 1][0]!r} occurs {counts.max()} times")
    return Embeddings(**joined, meta=meta or {})


def embed_shard(embedder: Embedder, shard: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Embed every clip of one feature shard (``pipeline.features.shards``) into the embedding shard ``out``."""
    from pipeline.features.shards import load_feature_set

    features = load_feature_set([shard])
    clips = ClipArrays.from_feature_set(features)
    if clips.dims != embedder.dims:
        raise EmbeddingError(f"{shard}: feature sizes {clips.dims} do not fit {embedder.checkpoint}")
    audio, visual = embedder.embed(clips)
    return write_embeddings(out, Embeddings(
        clip_id=features.clip_id, label=features.label, label_id=features.label_id, split=features.split,
        audio=audio, visual=visual, meta=embedder.meta(features.meta)))
