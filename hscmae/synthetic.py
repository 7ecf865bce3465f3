"""The built-in feature set: generated per-second audio and visual features with known structure.

Each class has a random signature ``[signal_dim]``; a clip's signature is its class's plus a
clip-level deviation, shared by both modalities (so a clip's own pair is its best match). The
event fills a random run of seconds; the other seconds hold noise only. The signature reaches
audio (``[T, 128]``) and visual (``[T, 2048]``) features through two different random
projections, plus Gaussian noise. Two kinds of difficulty are planted:

- two events: in ``two_event_fraction`` of the clips a second class's signature is mixed into
  a run of seconds of both modalities (at ``second_event_weight``);
- spurious co-occurrence: in ``spurious_fraction`` of the clips the audio carries another
  class's signature while the visual and the label keep the clip's own class.

No network is involved, so the shard metadata names the extractor ``synthetic`` with weights
``none``: these numbers say nothing about real data. Everything is seeded and deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.shards import SPLITS, ClipFeatures, write_shard
from pipeline.splits import carve_val, stratified_holdout

GENERATOR_VERSION = "1"
EXTRACTOR = "synthetic"
NO_WEIGHTS = "none"
DATASET = "synthetic"


@dataclass
class SyntheticConfig:
    """Size and structure of the generated feature set (defaults: the demo, ~2,000 clips of 10 s)."""

    clips: int = 2000
    classes: int = 10
    seconds: int = 10
    audio_dim: int = 128
    visual_dim: int = 2048
    signal_dim: int = 16
    clip_spread: float = 0.6
    noise: float = 1.5
    min_event_seconds: int = 3
    two_event_fraction: float = 0.2
    second_event_weight: float = 0.7
    spurious_fraction: float = 0.1
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.classes < 2 or self.clips < 4 * self.classes:
            raise ValueError(f"need >= 2 classes and >= 4 clips per class, got {self.classes} classes, {self.clips} clips")
        if not 1 <= self.min_event_seconds <= self.seconds:
            raise ValueError(f"min_event_seconds must be in [1, seconds={self.seconds}], got {self.min_event_seconds}")
        for name in ("two_event_fraction", "spurious_fraction", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.test_fraction < 1.0 or self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError(f"test_fraction ({self.test_fraction}) must be in (0, 1) and leave room for train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of everything that decides the generated data."""
        text = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class SyntheticClips:
    """Generated clips and their planted structure.

    ``audio: [N, T, Da]``, ``visual: [N, T, Dv]`` float32; ``label``, ``audio_class``,
    ``second_class`` (-1 when the clip has one event): ``[N]`` int64; ``split``: ``[N]`` names.
    """

    audio: np.ndarray
    visual: np.ndarray
    label: np.ndarray
    audio_class: np.ndarray
    second_class: np.ndarray
    split: np.ndarray
    signatures: np.ndarray


def _other_class(rng: np.random.Generator, label: np.ndarray, classes: int) -> np.ndarray:
    """A class different from ``label`` for every entry, uniformly."""
    return (label + rng.integers(1, classes, size=len(label))) % classes


def _event_runs(rng: np.random.Generator, n: int, seconds: int, shortest: int) -> np.ndarray:
    """``[n, seconds]`` float mask: 1 on a random contiguous run of at least ``shortest`` seconds."""
    length = rng.integers(shortest, seconds + 1, size=n)
    start = rng.integers(0, seconds - length + 1)
    t = np.arange(seconds)
    return ((t >= start[:, None]) & (t < (start + length)[:, None])).astype(np.float32)


def generate(config: SyntheticConfig) -> SyntheticClips:
    """Generate the clips of ``config`` (deterministic in ``config.seed``)."""
    c = config
    rng = np.random.default_rng(c.seed)
    signatures = rng.normal(size=(c.classes, c.signal_dim))
    proj = {"audio": rng.normal(size=(c.signal_dim, c.audio_dim)) / np.sqrt(c.signal_dim),
            "visual": rng.normal(size=(c.signal_dim, c.visual_dim)) / np.sqrt(c.signal_dim)}
    label = rng.permutation(np.arange(c.clips) % c.classes)
    deviation = c.clip_spread * rng.normal(size=(c.clips, c.signal_dim))

    audio_class = label.copy()
    spurious = rng.permutation(c.clips)[: round(c.spurious_fraction * c.clips)]
    audio_class[spurious] = _other_class(rng, label[spurious], c.classes)
    second_class = np.full(c.clips, -1)
    two = rng.permutation(c.clips)[: round(c.two_event_fraction * c.clips)]
    second_class[two] = _other_class(rng, label[two], c.classes)

    main_run = _event_runs(rng, c.clips, c.seconds, c.min_event_seconds)
    second_run = _event_runs(rng, c.clips, c.seconds, 1) * (second_class >= 0)[:, None] * c.second_event_weight
    second_sig = signatures[np.maximum(second_class, 0)]

    def latent(own_class: np.ndarray) -> np.ndarray:
        # [N, T, signal_dim]: own event on its run, second event on its run
        own = signatures[own_class] + deviation
        return main_run[:, :, None] * own[:, None, :] + second_run[:, :, None] * second_sig[:, None, :]

    features = {}
    for name, own_class in (("audio", audio_class), ("visual", label)):
        signal = latent(own_class) @ proj[name]
        features[name] = (signal + c.noise * rng.normal(size=signal.shape)).astype(np.float32)

    split = np.where(stratified_holdout(label, c.test_fraction, c.seed), "test", "train").astype(object)
    if c.val_fraction > 0:
        split = carve_val(split, label, c.val_fraction / (1.0 - c.test_fraction), c.seed)
    return SyntheticClips(audio=features["audio"], visual=features["visual"], label=label,
                          audio_class=audio_class, second_class=second_class, split=split, signatures=signatures)


def shard_meta(config: SyntheticConfig) -> dict:
    """Shard metadata: extractor ``synthetic``, weights ``none`` (no network made these features)."""
    params = config.to_dict()
    entry = {"extractor": EXTRACTOR, "version": GENERATOR_VERSION, "params": params, "weights": NO_WEIGHTS}
    return {"audio": entry, "visual": entry, "dataset": DATASET}


def is_synthetic(meta: dict) -> bool:
    """True when the features came from this generator."""
    return meta.get("audio", {}).get("extractor") == EXTRACTOR and meta.get("visual", {}).get("extractor") == EXTRACTOR


def write_synthetic(config: SyntheticConfig, root: str | Path) -> Path:
    """Write the shards of ``config`` under ``root/synthetic-<digest>/`` (one per split) and return that folder.

    A folder that already holds every shard is reused as is.
    """
    folder = Path(root) / f"synthetic-{config.digest()}"
    clips = None
    for split in SPLITS:
        if config.val_fraction == 0 and split == "val":
            continue
        path = folder / f"{split}.parquet"
        if path.exists():
            continue
        clips = clips or generate(config)
        rows = np.flatnonzero(clips.split == split)
        write_shard(path, [
            ClipFeatures(clip_id=f"syn-{i:06d}", label=f"class_{clips.label[i]:02d}", label_id=int(clips.label[i]),
                         split=split, audio=clips.audio[i], visual=clips.visual[i])
            for i in rows
        ], shard_meta(config))
    return folder
