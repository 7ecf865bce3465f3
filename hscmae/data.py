"""Padded per-second clip features as dense arrays, the input of training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.features.shards import FeatureSet

from pipeline.vocab import MODALITIES


@dataclass
class ClipArrays:
    """Clips padded to a common length.

    Args:
        audio: ``[N, Ta, Da]`` float32, zero after each clip's last second.
        visual: ``[N, Tv, Dv]`` float32.
        audio_valid: ``[N, Ta]`` bool, True where a second is real.
        visual_valid: ``[N, Tv]`` bool.
        label_id: ``[N]`` int64.
        clip_id: ``[N]`` optional ids, used only in error messages.
    """

    audio: np.ndarray
    visual: np.ndarray
    audio_valid: np.ndarray
    visual_valid: np.ndarray
    label_id: np.ndarray
    clip_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.label_id)
        for m in MODALITIES:
            x, valid = self.features(m), self.valid(m)
            if x.ndim != 3 or x.shape[0] != n or valid.shape != x.shape[:2]:
                raise ValueError(f"{m}: expected features [N={n}, T, D] and valid [N, T], "
                                 f"got {x.shape} and {valid.shape}")
            empty = np.flatnonzero(~valid.any(axis=1))
            if empty.size:
                raise ValueError(f"{m}: clip {self.name(int(empty[0]))} has no valid second")

    def __len__(self) -> int:
        return len(self.label_id)

    def features(self, modality: str) -> np.ndarray:
        """``[N, T, D]`` features of ``modality``."""
        return getattr(self, modality)

    def valid(self, modality: str) -> np.ndarray:
        """``[N, T]`` validity mask of ``modality``."""
        return getattr(self, f"{modality}_valid")

    @property
    def dims(self) -> dict[str, int]:
        """Feature size per modality, e.g. ``{"audio": 128, "visual": 2048}``."""
        return {m: self.features(m).shape[2] for m in MODALITIES}

    @property
    def clip_level_modalities(self) -> tuple[str, ...]:
        """Modalities in which every clip has exactly one valid second: clip-level features (``T = 1``, e.g. the
        authors' published pooled vectors), where dropping seconds can neither mask nor remove anything."""
        return tuple(m for m in MODALITIES if bool((self.valid(m).sum(axis=1) == 1).all()))

    def name(self, row: int) -> str:
        """How error messages refer to clip ``row``."""
        return f"row {row}" + ("" if self.clip_id is None else f" ({self.clip_id[row]})")

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean over valid seconds: audio ``[N, Da]`` and visual ``[N, Dv]``, float32."""
        return tuple(masked_mean(self.features(m), self.valid(m)) for m in MODALITIES)

    def subset(self, index: np.ndarray) -> ClipArrays:
        """The clips at ``index`` (boolean mask ``[N]`` or integer positions)."""
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return ClipArrays(
            audio=self.audio[idx], visual=self.visual[idx],
            audio_valid=self.audio_valid[idx], visual_valid=self.visual_valid[idx],
            label_id=self.label_id[idx], clip_id=None if self.clip_id is None else self.clip_id[idx],
        )

    def check_finite(self, where: str) -> None:
        """Raise ``ValueError`` naming the first clip whose valid features are not all finite."""
        for m in MODALITIES:
            bad = ~np.isfinite(self.features(m)).all(axis=2) & self.valid(m)
            rows = np.flatnonzero(bad.any(axis=1))
            if rows.size:
                second = int(np.flatnonzero(bad[rows[0]])[0])
                raise ValueError(f"{where}: {m} of clip {self.name(int(rows[0]))} is not finite "
                                 f"(second {second}); {rows.size} clip(s) affected")

    @classmethod
    def from_feature_set(cls, fs: FeatureSet) -> ClipArrays:
        """Pad the per-clip ``[T_i, D]`` sequences of ``fs`` into dense arrays."""
        padded = {m: _pad(getattr(fs, m)) for m in MODALITIES}
        return cls(
            audio=padded["audio"][0], visual=padded["visual"][0],
            audio_valid=padded["audio"][1], visual_valid=padded["visual"][1],
            label_id=np.asarray(fs.label_id, dtype=np.int64), clip_id=np.asarray(fs.clip_id),
        )


def masked_mean(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean of ``x: [N, T, D]`` over the seconds where ``valid: [N, T]``; returns ``[N, D]`` float32."""
    weights = valid.astype(np.float32)
    total = np.einsum("ntd,nt->nd", x, weights)
    return (total / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _pad(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``sequences[i]: [T_i, D]`` -> ``([N, max T, D]`` float32, ``[N, max T]`` bool)."""
    t_max = max(s.shape[0] for s in sequences)
    dim = sequences[0].shape[1]
    out = np.zeros((len(sequences), t_max, dim), dtype=np.float32)
    valid = np.zeros((len(sequences), t_max), dtype=bool)
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = s
        valid[i, : s.shape[0]] = True
    return out, valid

