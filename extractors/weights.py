"""Finding, fetching, checking and loading pretrained weight files.

``weights`` arguments everywhere in ``extractors`` mean: a path the user gives, ``None`` to
look in the torch hub cache (``torch.hub.get_dir()/checkpoints/<published file>``) and the
Hugging Face cache, or :data:`pipeline.vocab.RANDOM_WEIGHTS` for random initialisation (then
shards say so). The published files are named in :mod:`extractors.registry`.

    python -m extractors.weights fetch vggish resnet50     # download the published files, check sha256

Finding a file needs no torch (:func:`torch_hub_dir`), so a command line checks that the files it will
load exist before torch loads; loading imports torch.

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
from pathlib import Path

from typing import TYPE_CHECKING

from extractors.registry import WEIGHT_FILES, WeightsSpec
from pipeline.io.atomic import atomic_path
from pipeline.io.digest import sha256_file
from pipeline.vocab import RANDOM_WEIGHTS

if TYPE_CHECKING:
    import torch

WeightsArg = str | os.PathLike[str] | None
BASE_URL_ENV = "HSCMAE_WEIGHTS_BASE_URL"  # fetch from here instead of the published host (mirrors, tests)
HUB_HASH = re.compile(r"-([a-f0-9]{6,})\.")  # torch hub's convention: a sha256 prefix in the file name

class WeightsNotFoundError(FileNotFoundError):
    """A weight file is missing; the message says which file, where it was looked for, and how to get it.

    Args:
        missing: which file is missing, and where it was looked for.
        remedy: how to get it (the fetch command, or its URL).
        fetch_name: its name for ``python -m extractors.weights fetch``, when it is a published file.
    """

    def __init__(self, missing: str, remedy: str, *, fetch_name: str | None = None) -> None:
        super().__init__(f"{missing}; {remedy} or run with --weights {RANDOM_WEIGHTS}")
        self.missing, self.fetch_name = missing, fetch_name


def is_random(weights: WeightsArg) -> bool:
    """True when ``weights`` asks for random initialisation by name."""
    return isinstance(weights, str) and weights == RANDOM_WEIGHTS


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``: torch's own answer once torch is loaded (it honours ``torch.hub.set_dir``), else
    the same rule read from the environment (``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
    ``~/.cache/torch/hub``), so a command line finds the files before it loads torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


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
        ValueError: when ``weights`` is :data:`pipeline.vocab.RANDOM_WEIGHTS` (there is no file to resolve).
    """
    if is_random(weights):
        raise ValueError(f"weights={RANDOM_WEIGHTS!r} has no file to resolve for {spec.file_name}")
    if weights is not None:
        path = Path(weights)
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"weight file {path} (for {spec.file_name}) does not exist", f"get it from {spec.url}")
    if spec.hf_hub_id:
        candidates = _hf_cached(spec.hf_hub_id)
        into = "the Hugging Face cache (huggingface-cli download " + spec.hf_hub_id + ")"
    else:
        hub = torch_hub_dir() / "checkpoints" / spec.file_name
        candidates = [(str(hub), hub if hub.is_file() else None)]
        into = str(hub.parent)
    for _, path in candidates:
        if path is not None:
            return path
    looked = "; ".join(where for where, _ in candidates)
    name = next((n for n, known in WEIGHT_FILES.items() if known.file_name == spec.file_name
                 and known.url == spec.url), None)
    fetch = f"python -m extractors.weights fetch {name}" if name else f"download {spec.url} into {into}"
    raise WeightsNotFoundError(f"weight file {spec.file_name} not found (looked in {looked})",
                               f"get it with `{fetch}` ({spec.url})", fetch_name=name)


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
    target = Path(hub_dir or torch_hub_dir() / "checkpoints") / spec.file_name
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
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m extractors.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", allow_abbrev=False, help="download published weight files into the cache and check them")
    get.add_argument("names", nargs="+", choices=sorted(WEIGHT_FILES), metavar="NAME", help=", ".join(sorted(WEIGHT_FILES)))
    get.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV),
                     help=f"fetch from this folder URL instead of the published one (or ${BASE_URL_ENV})")
    args = parser.parse_args(argv)
    for name in args.names:
        spec = WEIGHT_FILES[name]
        try:
            path = fetch(spec, base_url=args.base_url)
        except (OSError, ValueError) as error:
            print(f"error: {spec.file_name}: {error}", file=sys.stderr)
            return 2
        print(f"{name}: {path} (sha256 {sha256_file(path)})")
    return 0


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.bin`` (``torch.load(weights_only=True)``); a ``.pth``
    may hold plain numeric numpy arrays (the published VGGish PCA file does), nothing else."""
    import numpy as np
    import safetensors.torch
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path), device="cpu")
    numpy_arrays = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                    type(np.dtype(np.float32)), type(np.dtype(np.float64))]
    with torch.serialization.safe_globals(numpy_arrays):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_weights(spec: WeightsSpec, weights: WeightsArg) -> tuple[dict[str, torch.Tensor] | None, str]:
    """``(state_dict, sha256)`` of the resolved file, or ``(None, RANDOM_WEIGHTS)`` when asked for random weights."""
    if is_random(weights):
        return None, RANDOM_WEIGHTS
    path = resolve_weights(spec, weights)
    return load_state_dict_file(path), sha256_file(path)


if __name__ == "__main__":
    sys.exit(main())
