"""Dataset cards (``data_manifests/<name>.yaml``): classes, expected counts, official files.

A card says what a dataset should look like, so builders can check what they were given:
its class list (the order defines ``label_id``), expected counts, the official source
files with their URLs and accepted sha256 values, the split rule, the licence as far as
known, and the shapes of published features. This module also verifies a file against
its card entry and can fetch a file the card marks as a direct download.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.io.atomic import atomic_path
from pipeline.io.digest import sha256_file
from pipeline.io.errors import UserError

CARDS_DIR = Path(__file__).resolve().parents[2] / "data_manifests"
_REQUIRED_KEYS = ("name", "title", "license", "classes", "expected", "splits", "sources")
_CHUNK = 1 << 20


class CardError(UserError):
    """A card, or a file checked against it, is not what it should be; the message names both."""


@dataclass(frozen=True)
class SourceFile:
    """One official file of a dataset.

    Args:
        file: its usual file name.
        url: where the authors publish it.
        direct_download: False for share links (Google Drive) that need a browser or a client.
        sha256: accepted digests (several when published variants differ); empty when unknown.
        note: anything a user must know about it.
    """

    file: str
    url: str
    direct_download: bool
    sha256: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class FeatureSpec:
    """A published feature file: its HDF5 dataset and the per-clip shape (without the clip axis)."""

    file: str
    dataset: str
    shape: tuple[int, ...]
    extractor: str
    version: str


@dataclass(frozen=True)
class DatasetCard:
    """A parsed, checked dataset card."""

    name: str
    title: str
    license: str
    classes: tuple[str, ...]
    expected: dict[str, Any]
    splits: dict[str, Any]
    sources: dict[str, SourceFile]
    features: dict[str, FeatureSpec] = field(default_factory=dict)
    citation: str = ""
    homepage: str = ""
    path: Path | None = None


def _card_path(name_or_path: str | os.PathLike[str]) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return CARDS_DIR / f"{candidate.name}.yaml"


def load_card(name_or_path: str | os.PathLike[str]) -> DatasetCard:
    """Load a card by name (``"ave"``, looked up in ``data_manifests/``) or by path to a YAML file."""
    path = _card_path(name_or_path)
    if not path.is_file():
        raise CardError(f"{path}: no such dataset card")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise CardError(f"{path}: a card must be a YAML mapping")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise CardError(f"{path}: missing keys {missing}")
    classes = tuple(str(c) for c in raw["classes"])
    duplicated = sorted({c for c in classes if classes.count(c) > 1})
    if not classes or duplicated:
        raise CardError(f"{path}: classes must be a non-empty list without repeats (repeated: {duplicated})")
    sources = {}
    for key, entry in raw["sources"].items():
        digests = tuple(str(d).lower() for d in entry.get("sha256") or ())
        bad = [d for d in digests if len(d) != 64 or any(ch not in "0123456789abcdef" for ch in d)]
        if bad:
            raise CardError(f"{path}: source '{key}' has malformed sha256 values {bad}")
        sources[key] = SourceFile(
            file=str(entry["file"]), url=str(entry["url"]), direct_download=bool(entry["direct_download"]),
            sha256=digests, note=str(entry.get("note", "")).strip(),
        )
    features = {
        key: FeatureSpec(file=str(e["file"]), dataset=str(e["dataset"]), shape=tuple(int(s) for s in e["shape"]),
                         extractor=str(e["extractor"]), version=str(e["version"]))
        for key, e in (raw.get("features") or {}).items()
    }
    return DatasetCard(
        name=str(raw["name"]), title=str(raw["title"]), license=str(raw["license"]).strip(), classes=classes,
        expected=dict(raw["expected"]), splits=dict(raw["splits"]), sources=sources, features=features,
        citation=str(raw.get("citation", "")), homepage=str(raw.get("homepage", "")), path=path,
    )


def verify_source(path: str | os.PathLike[str], card: DatasetCard, key: str) -> str:
    """Check ``path`` against the card's source ``key``; return its sha256.

    Raises :class:`CardError` naming the file, the digest found and the ones accepted. A source
    whose card lists no digest is accepted (its digest is still returned, for the record).
    """
    if key not in card.sources:
        raise CardError(f"{card.path}: no source '{key}' (have {sorted(card.sources)})")
    digest = sha256_file(path)
    accepted = card.sources[key].sha256
    if accepted and digest not in accepted:
        raise CardError(
            f"{path}: sha256 {digest} is not an accepted version of {card.name} '{card.sources[key].file}' "
            f"(accepted: {', '.join(accepted)})"
        )
    return digest


def fetch_source(card: DatasetCard, key: str, dest_dir: str | os.PathLike[str]) -> Path:
    """Download the card's source ``key`` into ``dest_dir`` (skipped when a verified copy is there).

    Only sources marked ``direct_download`` can be fetched; the file appears only after its
    sha256 matched. Raises :class:`CardError` otherwise.
    """
    source = card.sources[key]
    dest = Path(dest_dir) / source.file
    if dest.is_file():
        verify_source(dest, card, key)
        return dest
    if not source.direct_download:
        raise CardError(f"{card.name} '{source.file}' is not a direct download ({source.url}): "
                        f"fetch it by hand and pass its path. {source.note}")
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(source.url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
        verify_source(tmp, card, key)
    return dest
