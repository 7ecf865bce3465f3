"""The built-in feature set: weakly paired, non-linear per-second audio and visual features.

A clip has a semantic code (its class's *mode* plus a clip-level deviation, shared by both
modalities) that is active during a run of seconds; every other second shows background
content of its own modality. Each modality turns its per-second latent into features through
its own random two-layer network (audio: ``tanh``, visual: ``relu``), whose input also holds a
per-clip nuisance code of that modality only (recording channel, camera), so semantics and
nuisance are entangled non-linearly. Planted on top (see ``docs/protocol.md`` for why):

- several modes per class: a class sounds and looks several ways, so class regions are not
  one blob and a class centroid is a poor (linear) summary;
- two events: in ``two_event_fraction`` of the clips a second class is active in both
  modalities on its own run of seconds (at ``second_event_weight``);
- spurious co-occurrence: every class has a fixed partner class; in ``spurious_fraction`` of
  the clips the picture shows the partner's content on a run of seconds (silent in the audio);
- missing seconds: in ``missing_fraction`` of the clips each modality's track ends early,
  independently (valid lengths from ``min_valid_seconds`` to ``seconds``).

No network is involved, so the shard metadata names the extractor ``synthetic`` with weights
``none``: these numbers say nothing about real data. Everything is seeded and deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from pipeline.features.shards import ClipFeatures, write_shard

from pipeline.vocab import MODALITIES, SPLITS
from pipeline.datasets.splits import carve_val, stratified_holdout

GENERATOR_VERSION = "2"
EXTRACTOR = "synthetic"
NO_WEIGHTS = "none"
DATASET = "synthetic"
ACTIVATIONS = {"audio": np.tanh, "visual": lambda x: np.maximum(x, 0.0)}


@dataclass(config=ConfigDict(extra="forbid"))
class SyntheticConfig:
    """Size and structure of the generated feature set (defaults: 3,000 clips of 10 s, 450 val, 450 test)."""

    clips: Annotated[int, Field(ge=1, description="clips generated (at least 4 per class)")] = 3000
    classes: Annotated[int, Field(ge=2, description="classes")] = 10
    seconds: Annotated[int, Field(ge=1, description="seconds per clip")] = 10
    audio_dim: Annotated[int, Field(ge=1, description="audio features per second")] = 128
    visual_dim: Annotated[int, Field(ge=1, description="visual features per second")] = 1024
    signal_dim: Annotated[int, Field(ge=1, description="size of the semantic code shared by both modalities")] = 16
    modes: Annotated[int, Field(ge=1, description="ways each class sounds and looks (modes)")] = 3
    clip_spread: Annotated[float, Field(description="spread of a clip's code around its class mode")] = 0.5
    second_jitter: Annotated[float, Field(description="per-second noise on the event's code")] = 0.3
    nuisance_dim: Annotated[int, Field(description="size of each modality's own per-clip nuisance code")] = 8
    nuisance: Annotated[float, Field(description="scale of the nuisance code")] = 1.0
    hidden: Annotated[int, Field(ge=1, description="hidden width of each modality's generating network")] = 128
    gain: Annotated[float, Field(description="gain of the generating networks' first layer")] = 1.5
    noise: Annotated[float, Field(description="feature noise")] = 0.3
    min_event_seconds: Annotated[int, Field(ge=1, description="shortest event (at most seconds)")] = 3
    two_event_fraction: Annotated[float, Field(ge=0.0, lt=1.0, description="clips with a second event")] = 0.2
    second_event_weight: Annotated[float, Field(description="strength of the second event")] = 0.7
    spurious_fraction: Annotated[float, Field(ge=0.0, lt=1.0, description="clips whose picture shows the "
                                                                          "partner class")] = 0.15
    missing_fraction: Annotated[float, Field(ge=0.0, lt=1.0, description="clips whose tracks end early")] = 0.3
    min_valid_seconds: Annotated[int, Field(ge=1, description="shortest track (at most seconds)")] = 4
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0, description="share of clips in test")] = 0.15
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0, description="share of clips in val")] = 0.15
    seed: Annotated[int, Field(ge=0, description="seed of the generator")] = 0

    def __post_init__(self) -> None:
        if self.clips < 4 * self.classes:
            raise ValueError(f"need >= 4 clips per class, got {self.classes} classes, {self.clips} clips")
        for name in ("min_event_seconds", "min_valid_seconds"):
            if getattr(self, name) > self.seconds:
                raise ValueError(f"{name} must be at most seconds={self.seconds}, got {getattr(self, name)}")
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError(f"test_fraction ({self.test_fraction}) and val_fraction ({self.val_fraction}) "
                             "must leave room for train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of everything that decides the generated data."""
        text = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclasses.dataclass
class SyntheticClips:
    """Generated clips and their planted structure.

    ``audio: [N, T, Da]``, ``visual: [N, T, Dv]`` float32, zero after each track's end;
    ``audio_valid``, ``visual_valid``: ``[N, T]`` bool (a prefix of each row); ``label``,
    ``mode``, ``second_class`` (-1: one event), ``distractor`` (partner class shown in the
    visual, -1: none): ``[N]`` int64; ``partner``: ``[classes]``; ``audio_nuisance``: ``[N, nuisance_dim]``;
    ``split``: ``[N]`` names.
    """

    audio: np.ndarray
    visual: np.ndarray
    audio_valid: np.ndarray
    visual_valid: np.ndarray
    label: np.ndarray
    mode: np.ndarray
    second_class: np.ndarray
    distractor: np.ndarray
    partner: np.ndarray
    audio_nuisance: np.ndarray
    split: np.ndarray


def _other_class(rng: np.random.Generator, label: np.ndarray, classes: int) -> np.ndarray:
    """A class different from ``label`` for every entry, uniformly."""
    return (label + rng.integers(1, classes, size=len(label))) % classes


def _runs(rng: np.random.Generator, n: int, seconds: int, shortest: int) -> np.ndarray:
    """``[n, seconds]`` bool: True on a random contiguous run of at least ``shortest`` seconds."""
    length = rng.integers(shortest, seconds + 1, size=n)
    start = rng.integers(0, seconds - length + 1)
    t = np.arange(seconds)
    return (t >= start[:, None]) & (t < (start + length)[:, None])


def _pick(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """``[n]`` bool: exactly ``round(fraction * n)`` entries True, at random."""
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: round(fraction * n)]] = True
    return chosen


def _network(rng: np.random.Generator, c: SyntheticConfig, out_dim: int) -> tuple[np.ndarray, ...]:
    """Weights of one modality's generator ``[signal + nuisance] -> hidden -> out_dim``."""
    fan_in = c.signal_dim + c.nuisance_dim
    return (c.gain * rng.normal(size=(fan_in, c.hidden)) / np.sqrt(fan_in), rng.normal(size=c.hidden),
            rng.normal(size=(c.hidden, out_dim)) / np.sqrt(c.hidden))


def generate(config: SyntheticConfig) -> SyntheticClips:
    """Generate the clips of ``config`` (deterministic in ``config.seed``)."""
    c = config
    rng = np.random.default_rng(c.seed)
    n, t = c.clips, c.seconds
    centres = rng.normal(size=(c.classes, c.modes, c.signal_dim))  # each class: several modes
    partner = (np.arange(c.classes) + rng.integers(1, c.classes)) % c.classes  # fixed co-occurring class
    networks = {m: _network(rng, c, dim) for m, dim in (("audio", c.audio_dim), ("visual", c.visual_dim))}

    label = rng.permutation(np.arange(n) % c.classes)
    mode = rng.integers(0, c.modes, size=n)
    semantic = centres[label, mode] + c.clip_spread * rng.normal(size=(n, c.signal_dim))  # shared by both

    two = _pick(rng, n, c.two_event_fraction)
    second_class = np.where(two, _other_class(rng, label, c.classes), -1)
    second = centres[np.maximum(second_class, 0), rng.integers(0, c.modes, size=n)]
    spurious = _pick(rng, n, c.spurious_fraction)
    distractor = np.where(spurious, partner[label], -1)
    shown = centres[partner[label], rng.integers(0, c.modes, size=n)]

    main_run = _runs(rng, n, t, c.min_event_seconds)
    second_run = _runs(rng, n, t, 1) & two[:, None]
    distractor_run = _runs(rng, n, t, 1) & spurious[:, None]

    features, valid, nuisance = {}, {}, {}
    for m in MODALITIES:
        # [N, T, signal]: background content of this modality, the events on their runs
        z = rng.normal(size=(n, t, c.signal_dim))
        z[main_run] = semantic[:, None, :].repeat(t, axis=1)[main_run]
        z += c.second_jitter * rng.normal(size=z.shape) * main_run[:, :, None]
        if m == "visual":  # the partner's content takes over its seconds of the picture
            z[distractor_run] = shown[:, None, :].repeat(t, axis=1)[distractor_run]
        z += c.second_event_weight * second_run[:, :, None] * second[:, None, :]
        nuisance[m] = c.nuisance * rng.normal(size=(n, c.nuisance_dim))
        inputs = np.concatenate([z, nuisance[m][:, None, :].repeat(t, axis=1)], axis=2).astype(np.float32)
        w1, b1, w2 = (w.astype(np.float32) for w in networks[m])
        x = ACTIVATIONS[m](inputs @ w1 + b1) @ w2
        x += c.noise * rng.standard_normal(size=x.shape, dtype=np.float32)
        ends = np.where(_pick(rng, n, c.missing_fraction), rng.integers(c.min_valid_seconds, t + 1, size=n), t)
        valid[m] = np.arange(t)[None, :] < ends[:, None]
        features[m] = np.where(valid[m][:, :, None], x, 0.0).astype(np.float32)

    split = np.where(stratified_holdout(label, c.test_fraction, c.seed), "test", "train").astype(object)
    if c.val_fraction > 0:
        split = carve_val(split, label, c.val_fraction / (1.0 - c.test_fraction), c.seed)
    return SyntheticClips(audio=features["audio"], visual=features["visual"], audio_valid=valid["audio"],
                          visual_valid=valid["visual"], label=label, mode=mode, second_class=second_class,
                          distractor=distractor, partner=partner, audio_nuisance=nuisance["audio"], split=split)


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

    Each clip's tracks are written up to their valid length. A folder that already holds every
    shard is reused as is.
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
                         split=split, audio=clips.audio[i, clips.audio_valid[i]],
                         visual=clips.visual[i, clips.visual_valid[i]])
            for i in rows
        ], shard_meta(config))
    return folder
