"""Finding, checking and loading pretrained weight files.

``weights`` arguments everywhere in ``extractors`` mean: a path the user gives, ``None`` to
look in the torch hub cache (``torch.hub.get_dir()/checkpoints/<published file>``) and the
Hugging Face cache, or ``"random"`` for random initialisation (then shards say ``random``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from pipeline.digest import sha256_file
from pipeline.shards import RANDOM_WEIGHTS

WeightsArg = str | os.PathLike[str] | None

# Plain numeric numpy arrays (the published VGGish PCA file may hold them); nothing else.
_NUMPY_ARRAY_GLOBALS = [
    np._core.multiarray._reconstruct, np.ndarray, np.dtype,
    type(np.dtype(np.float32)), type(np.dtype(np.float64)),
]


class WeightsNotFoundError(FileNotFoundError):
    """A weight file is missing; the message says which file, where it was looked for, and its URL."""


@dataclass(frozen=True)
class WeightsSpec:
    """Where a published weight file comes from.

    Args:
        file_name: the published file name (as in the torch hub cache).
        url: where to download it.
        hf_hub_id: the Hugging Face repository that also serves it (timm models), if any.
    """

    file_name: str
    url: str
    hf_hub_id: str | None = None


def is_random(weights: WeightsArg) -> bool:
    """True when ``weights`` asks for random initialisation by name."""
    return isinstance(weights, str) and weights == RANDOM_WEIGHTS


def _hf_cached(hf_hub_id: str) -> list[tuple[str, Path | None]]:
    from huggingface_hub import try_to_load_from_cache

    found = []
    for name in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hf_hub_id, name)
        found.append((f"Hugging Face cache {hf_hub_id}/{name}", Path(hit) if isinstance(hit, str) else None))
    return found


def resolve_weights(spec: WeightsSpec, weights: WeightsArg) -> Path:
    """The weight file for ``spec``: ``weights`` if given, else the first cache hit.

    Raises:
        WeightsNotFoundError: naming the file, every place looked in, and the download URL.
        ValueError: when ``weights`` is ``"random"`` (there is no file to resolve).
    """
    if is_random(weights):
        raise ValueError(f"weights={RANDOM_WEIGHTS!r} has no file to resolve for {spec.file_name}")
    if weights is not None:
        path = Path(weights)
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"weight file {path} (for {spec.file_name}) does not exist; get it from {spec.url}")
    if spec.hf_hub_id:
        candidates = _hf_cached(spec.hf_hub_id)
        into = "the Hugging Face cache (huggingface-cli download " + spec.hf_hub_id + ")"
    else:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / spec.file_name
        candidates = [(str(hub), hub if hub.is_file() else None)]
        into = str(hub.parent)
    for _, path in candidates:
        if path is not None:
            return path
    looked = "; ".join(where for where, _ in candidates)
    raise WeightsNotFoundError(
        f"weight file {spec.file_name} not found (looked in: {looked}). Download it from {spec.url} "
        f"into {into}, or pass its path; weights='{RANDOM_WEIGHTS}' runs with random weights."
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.bin`` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path), device="cpu")
    with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_weights(spec: WeightsSpec, weights: WeightsArg) -> tuple[dict[str, torch.Tensor] | None, str]:
    """``(state_dict, sha256)`` of the resolved file, or ``(None, "random")`` when asked for random weights."""
    if is_random(weights):
        return None, RANDOM_WEIGHTS
    path = resolve_weights(spec, weights)
    return load_state_dict_file(path), sha256_file(path)
