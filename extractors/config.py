"""How features are extracted, torch-free: :class:`ExtractConfig`, what of it decides the features
(:func:`extract_cache_config`, a feature set's cache identity), the config that remakes a shard's
features from its metadata (:func:`extract_config_of`) and which extractors two shards' metadata
disagree on (:func:`differing_extractors`).

Command lines and the flows' run forms read these without importing torch; :mod:`extractors.extract`
runs the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.io.digest import sha256_file
from pipeline.vocab import MODALITIES, RANDOM_WEIGHTS


@dataclass(frozen=True)
class ExtractConfig:
    """How features are extracted. Weights: a file path, ``None`` (the published file, from the torch hub /
    Hugging Face cache) or :data:`pipeline.vocab.RANDOM_WEIGHTS`.

    Args:
        visual_model: ``resnet50``, ``resnet152``, ``vit_b16`` or ``vit_s16``.
        audio_postprocess: PCA-whiten and quantise VGGish embeddings (AudioSet's released format).
        clips_per_shard: clips per Parquet shard.
        batch_clips: clips per model batch.
        max_batch: most examples or frames in one forward pass (bounds accelerator memory).
        decode_workers: threads decoding clips; ``prefetch_clips`` bounds how far they run ahead.
        device: ``cuda`` when available unless set; ``amp`` uses float16 autocast on CUDA.
        seed: initialisation seed for random weights.
    """

    visual_model: str = "resnet50"
    audio_weights: str | None = None
    pca_weights: str | None = None
    visual_weights: str | None = None
    audio_postprocess: bool = False
    clips_per_shard: int = 256
    batch_clips: int = 8
    max_batch: int = 128
    decode_workers: int = 2
    prefetch_clips: int = 16
    device: str | None = None
    amp: bool = True
    seed: int = 0


def extract_cache_config(config: ExtractConfig) -> dict[str, object]:
    """The parts of ``config`` that decide the features (weights files by content, not path): a feature
    set's cache identity. Batching, threads, device and precision are left out."""
    decides = {name: getattr(config, name) for name in ("visual_model", "audio_postprocess", "seed")}
    for name in ("audio_weights", "pca_weights", "visual_weights"):
        value = getattr(config, name)
        decides[name] = sha256_file(value) if value not in (None, RANDOM_WEIGHTS) else value
    return decides


def extract_config_of(meta: Mapping[str, Any]) -> ExtractConfig:
    """The ``ExtractConfig`` that makes features like those of shard metadata ``meta``: its visual model, and
    random weights where ``meta`` says so, else the published files."""
    weights = {m: RANDOM_WEIGHTS if meta[m]["weights"] == RANDOM_WEIGHTS else None for m in MODALITIES}
    return ExtractConfig(visual_model=meta["visual"]["extractor"], audio_weights=weights["audio"],
                         visual_weights=weights["visual"])


def differing_extractors(made: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The modalities whose extractor metadata (name, version, parameters, weights) differ between two
    shards' metadata, in :data:`pipeline.vocab.MODALITIES` order."""
    return [m for m in MODALITIES if made[m] != wanted[m]]
