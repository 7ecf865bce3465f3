"""Finding, fetching, checking and loading pretrained weight files.

``weights`` arguments everywhere in ``extractors`` mean: a path the user gives, ``None`` to
look in the torch hub cache (``torch.hub.get_dir()/checkpoints/<published file>``) and the
Hugging Face cache, or ``"random"`` for random initialisation (then shards say ``random``).

    python -m extractors.weights fetch vggish resnet50     # download the published files, check sha256

Torch hub files carry the first hex digits of their sha256 in their name (``resnet50-0676ba61.pth``);
a download whose sha256 does not start with them is refused and nothing is left in the cache.
Hugging Face files (the ViTs) go through ``huggingface_hub``, which checks them itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from pipeline.io.atomic import atomic_path
from pipeline.io.digest import sha256_file
from pipeline.vocab import RANDOM_WEIGHTS

WeightsArg = str | os.PathLike[str] | None
BASE_URL_ENV = "HSCMAE_WEIGHTS_BASE_URL"  # fetch from here instead of the published host (mirrors, tests)
HUB_HASH = re.compile(r"-([a-f0-9]{6,})\.")  # torch hub's convention: a sha256 prefix in the file name

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
        raise WeightsNotFoundError(f"weight file {path} (for {spec.file_name}) does not exist; get it from {spec.url}"
                                   f" or run with --weights {RANDOM_WEIGHTS}")
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
    name = next((n for n, spec_of in published_names().items() if spec_of().file_name == spec.file_name
                 and spec_of().url == spec.url), None)
    fetch = f"python -m extractors.weights fetch {name}" if name else f"download {spec.url} into {into}"
    raise WeightsNotFoundError(
        f"weight file {spec.file_name} not found (looked in {looked}); get it with `{fetch}` ({spec.url}) "
        f"or run with --weights {RANDOM_WEIGHTS}")


def published_names() -> dict[str, Callable[[], WeightsSpec]]:
    """The fetchable names (``vggish``, ``vggish-pca`` and the visual models) and their specs."""
    from extractors import vggish_params as vp
    from extractors.visual import VISUAL_MODELS, _weights_spec

    names: dict[str, Callable[[], WeightsSpec]] = {
        "vggish": lambda: WeightsSpec(vp.VGGISH_WEIGHTS_FILE, vp.VGGISH_WEIGHTS_URL),
        "vggish-pca": lambda: WeightsSpec(vp.PCA_PARAMS_FILE, vp.PCA_PARAMS_URL)}
    for model, visual in VISUAL_MODELS.items():
        names[model] = lambda visual=visual: _weights_spec(visual)
    return names


def fetch(spec: WeightsSpec, *, base_url: str | None = None, hub_dir: Path | None = None) -> Path:
    """Download ``spec``'s file into the torch hub cache (or the Hugging Face cache) and check its sha256.

    ``base_url`` replaces the host and folder of ``spec.url`` (the file name stays). Returns the cached
    file; raises ``ValueError`` when the sha256 does not match the prefix the file name publishes.
    """
    if spec.hf_hub_id:
        if base_url is not None:  # the file name is the hub's generic one: nothing to check it by
            raise ValueError(f"comes from the Hugging Face hub ({spec.hf_hub_id}); --base-url serves torch hub "
                             "files only (set HF_ENDPOINT for a Hugging Face mirror)")
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec.hf_hub_id, spec.file_name))
    url = f"{base_url.rstrip('/')}/{spec.file_name}" if base_url else spec.url
    target = Path(hub_dir or Path(torch.hub.get_dir()) / "checkpoints") / spec.file_name
    if target.is_file():
        _check(target, spec)
        return target
    with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=60) as response:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        _check(tmp, spec)
    return target


def _check(path: Path, spec: WeightsSpec) -> str:
    digest = sha256_file(path)
    published = HUB_HASH.search(spec.file_name)
    if published and not digest.startswith(published.group(1)):
        raise ValueError(f"sha256 {digest} does not start with the published {published.group(1)}")
    return digest


def main(argv: list[str] | None = None) -> int:
    names = published_names()
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m extractors.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", allow_abbrev=False, help="download published weight files into the cache and check them")
    get.add_argument("names", nargs="+", choices=sorted(names), metavar="NAME", help=", ".join(sorted(names)))
    get.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV),
                     help=f"fetch from this folder URL instead of the published one (or ${BASE_URL_ENV})")
    args = parser.parse_args(argv)
    for name in args.names:
        spec = names[name]()
        try:
            path = fetch(spec, base_url=args.base_url)
        except (OSError, ValueError) as error:
            print(f"error: {spec.file_name}: {error}", file=sys.stderr)
            return 2
        print(f"{name}: {path} (sha256 {sha256_file(path)})")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
