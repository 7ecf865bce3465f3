"""Cross-modal search over per-clip embeddings: which clips look like this sounds, and the reverse.

    python -m hscmae.search --index EMB_DIR --query-audio CLIP_ID_OR_FILE --top 10
    python -m hscmae.search --index EMB_DIR --query-visual clips.npy --split test

``Index.load(EMB_DIR).search(vectors, k, direction)`` ranks a gallery by cosine similarity:
``"a2v"`` takes audio query vectors and ranks the clips' visual embeddings, ``"v2a"`` the reverse.

The index normalises each gallery once, when it is built, and keeps the unit vectors in float32 beside
the raw ones (``N * L * 4`` bytes each, per modality). Exact search is two steps per block of queries and
gallery clips. First one float32 matrix product over the unit gallery and a partial selection find, for each
query, the clips whose float32 score is within :func:`float32_margin` of its k-th best float32 score: this
set provably holds the exact top k. Then only those candidates are scored again in float64 from the raw
vectors, and ranked. A block of ``c`` queries and ``m`` gallery clips holds about ``BYTES_PER_PAIR * c * m``
bytes (float32 scores, their partitioned copy, the candidate mask), and ``c`` and ``m`` keep that under
``max_chunk_bytes`` (64 MiB by default; ``m`` is the whole gallery unless one query's scores do not fit). The
float64 step works on the candidates only: a few clips per query, unless many clips score within float32
rounding of the k-th (then up to about ``(64 * c + 8 * L) * m`` bytes more: float64 scores, the selection's
bookkeeping, the candidates' float64 unit vectors).
Scores are cosines in float64 rounded to multiples of :data:`SCORE_GRID` (2^-36), so cosines that are
equal up to floating-point error (a scaled copy of a clip, say) are exact ties. Ties are broken by gallery row:
among equal scores the clip that comes first in the index (shards sorted by name, rows in file order)
ranks first, so results never depend on chunk sizes.

With ``backend="faiss"`` (only when the ``faiss-cpu`` package is installed) a flat inner-product FAISS
index over float32 unit vectors does the ranking; it gives the same clips wherever no two scores are within
float32 rounding of each other (its tie order is FAISS's own).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.errors import UserError, add_debug_argument, named_errors, require_positive, user_errors
from pipeline.vocab import DIRECTIONS

BYTES_PER_PAIR = 12
DEFAULT_CHUNK_BYTES = 64 * 2**20
SCORE_GRID = 2.0**-36  # cosines are rounded to this grid, so near-equal ones tie exactly


@dataclass
class SearchResult:
    """Top-k of each query: ``index [Q, k]`` gallery rows and ``score [Q, k]`` cosines, best first."""

    index: np.ndarray
    score: np.ndarray


def unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """``x: [N, L]`` as float64 rows of length 1; ``ValueError`` for non-finite or all-zero rows."""
    x = np.array(x, dtype=np.float64)  # a copy, normalised in place
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected vectors [N>0, L], got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no [N, L] temporary, unlike np.linalg.norm
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{name}: row {int(bad[0])} is all zeros or not finite (cosine undefined)")
    x /= norms
    return x


def float32_margin(dim: int) -> float:
    """How far below a query's k-th best float32 score a clip may score and still be in its exact top k.

    For ``dim``-d unit vectors rounded to float32, a float32 dot product (any summation order) is within
    ``(dim + 2) * 2^-24`` of their float64 cosine: ``2 * 2^-24`` from rounding both vectors, ``dim * 2^-24``
    from the additions, each relative to the sum of ``|products|``, which is at most 1. A clip of the exact
    top k can therefore score at most twice that below the k-th float32 score; the margin adds ``4 * 2^-24``
    for the grid rounding, the float64 cosines and the float32 subtraction of the margin itself.
    """
    return (dim + 4) * 2.0**-23


def select_top(score: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best of ``score [Q, M]``: highest score first, ties by lower ``index [Q, M]``.

    Exact with ties: every candidate scoring at least the row's k-th largest score is kept, then
    ordered by (score descending, index ascending). Returns ``(index [Q, k], score [Q, k])``.
    """
    q, m = score.shape
    kth = np.partition(score, m - k, axis=1)[:, m - k, None]
    rows, cols = np.nonzero(score >= kth)
    values, ids = score[rows, cols], index[rows, cols]
    order = np.lexsort((ids, -values, rows))
    starts = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=q))[:-1]])
    take = order[(starts[:, None] + np.arange(k)[None, :]).reshape(-1)]
    return ids[take].reshape(q, k), values[take].reshape(q, k)


@dataclass
class Index:
    """Clips searchable by either modality: ``audio``, ``visual``: ``[N, L]`` float32 (not normalised).

    Building the index checks every vector and keeps its float32 unit rows (``N * L * 4`` bytes per modality)
    for the exact search's first step and for FAISS; the vectors are not to be changed afterwards.
    """

    clip_id: np.ndarray
    label: np.ndarray
    split: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    _unit: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)  # [N, L] float32 unit rows
    _faiss: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # built on first use

    def __post_init__(self) -> None:
        for m in ("audio", "visual"):
            vectors = getattr(self, m)
            if vectors.ndim != 2 or vectors.shape[0] != len(self.clip_id):
                raise ValueError(f"{m}: expected [N={len(self.clip_id)}, L], got {vectors.shape}")
            unit = np.empty(vectors.shape, dtype=np.float32)
            for start in range(0, len(vectors), 65536):  # validated and normalised without a full float64 copy
                block = vectors[start:start + 65536]
                unit[start:start + 65536] = unit_rows(block, f"{m} embeddings (from row {start})")
            self._unit[m] = unit
        self._rows = {str(c): i for i, c in enumerate(self.clip_id)}

    def __len__(self) -> int:
        return len(self.clip_id)

    @classmethod
    def load(cls, source: str | os.PathLike[str], *, split: str | None = None) -> Index:
        """The clips of an embedding folder or shard (``hscmae.embeddings``); ``split`` keeps one split."""
        from hscmae.embeddings import EmbeddingError, read_embeddings

        emb = read_embeddings(source)
        keep = np.ones(len(emb), dtype=bool) if split is None else emb.split == split
        if not keep.any():
            raise EmbeddingError(f"{source}: no clips in split {split!r}")
        return cls(clip_id=emb.clip_id[keep], label=emb.label[keep], split=emb.split[keep],
                   audio=emb.audio[keep], visual=emb.visual[keep], meta=emb.meta)

    def row(self, clip_id: str) -> int | None:
        """The gallery row of ``clip_id``, or None."""
        return self._rows.get(clip_id)

    def vectors(self, modality: str) -> np.ndarray:
        """``[N, L]`` embeddings of ``modality`` (``"audio"`` or ``"visual"``), as given (not normalised)."""
        return getattr(self, modality)

    def search(self, vectors: np.ndarray, k: int, direction: str, *, backend: str = "exact",
               max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> SearchResult:
        """Rank the gallery for each query of ``vectors [Q, L]`` (or ``[L]``) and keep the top ``k``.

        Args:
            direction: ``"a2v"`` (audio queries, visual gallery) or ``"v2a"``.
            k: clips per query (at most the gallery size).
            backend: ``"exact"`` (chunked numpy) or ``"faiss"`` (needs the ``faiss-cpu`` package).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        modality = DIRECTIONS[direction][1]
        gallery = self.vectors(modality)
        queries = unit_rows(np.atleast_2d(vectors), "queries")
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError(f"queries have {queries.shape[1]} dims, the index {gallery.shape[1]}")
        if not 1 <= k <= len(gallery):
            raise ValueError(f"k must be in [1, {len(gallery)}] (the gallery size), got {k}")
        if backend == "faiss":
            return self._search_faiss(queries, k, modality)
        if backend != "exact":
            raise ValueError(f"backend must be 'exact' or 'faiss', got {backend!r}")
        step = min(len(gallery), max(k, max_chunk_bytes // BYTES_PER_PAIR))  # gallery clips per chunk
        batch = max(1, max_chunk_bytes // (BYTES_PER_PAIR * step))  # queries per block
        found = [self._search_block(queries[start:start + batch], k, modality, step)
                 for start in range(0, len(queries), batch)]
        return SearchResult(index=np.concatenate([f[0] for f in found]), score=np.concatenate([f[1] for f in found]))

    def _search_block(self, queries: np.ndarray, k: int, modality: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` (``index, score [c, k]``) of unit ``queries [c, L]`` (float64), ``step`` clips at a time."""
        found = [self._search_chunk(queries, k, modality, start, step) for start in range(0, len(self), step)]
        if len(found) == 1:
            return found[0]
        scores, index = (np.concatenate([f[i] for f in found], axis=1) for i in (1, 0))
        return select_top(scores, index, k)

    def _search_chunk(self, queries: np.ndarray, k: int, modality: str, start: int, step: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``min(k, m)`` of unit ``queries [c, L]`` among the ``m`` gallery clips from row ``start``."""
        raw = self.vectors(modality)[start:start + step]
        # float32 scores pick the candidates: every clip within the margin of some query's k-th score
        fast = queries.astype(np.float32) @ self._unit[modality][start:start + step].T
        keep = min(k, len(raw))
        kth = np.partition(fast, len(raw) - keep, axis=1)[:, len(raw) - keep]
        cols = np.flatnonzero((fast >= (kth - float32_margin(raw.shape[1]))[:, None]).any(axis=0))
        # float64 cosines of the candidates, from the raw vectors, rank them exactly
        exact = np.round(queries @ unit_rows(raw[cols], "gallery").T / SCORE_GRID) * SCORE_GRID
        return select_top(exact, np.broadcast_to(start + cols, exact.shape), keep)

    def _search_faiss(self, queries: np.ndarray, k: int, modality: str) -> SearchResult:
        import faiss  # optional: pip install faiss-cpu

        if modality not in self._faiss:
            flat = faiss.IndexFlatIP(self.vectors(modality).shape[1])
            flat.add(self._unit[modality])
            self._faiss[modality] = flat
        score, index = self._faiss[modality].search(queries.astype(np.float32), k)
        return SearchResult(index=index.astype(np.int64), score=score.astype(np.float64))


def faiss_available() -> bool:
    """Whether the optional ``faiss`` module can be imported."""
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


# --- command line -------------------------------------------------------------------------------

def _queries(index: Index, value: str, modality: str) -> tuple[np.ndarray, list[str]]:
    """Query vectors ``[Q, L]`` and their names from a clip id of the index, a ``.npy`` file or an embedding shard."""
    row = index.row(value)
    if row is not None:
        label = index.label[row]
        return index.vectors(modality)[row:row + 1], [value if label is None else f"{value} ({label})"]
    path = Path(value)
    if not path.exists():
        raise UserError(f"{value}: neither a clip id of the index nor a file")
    if path.suffix == ".npy":
        try:
            vectors = np.atleast_2d(np.load(path, allow_pickle=False))
        except (ValueError, OSError) as exc:
            raise UserError(f"{path}: not a numeric .npy array ({exc})") from None
        if vectors.ndim != 2:
            raise UserError(f"{path}: expected a vector [L] or vectors [Q, L], got shape {vectors.shape}")
        return vectors, [f"{path.name}[{i}]" for i in range(len(vectors))]
    from hscmae.embeddings import read_embeddings

    emb = read_embeddings(path)
    return getattr(emb, modality), [str(c) if l is None else f"{c} ({l})" for c, l in zip(emb.clip_id, emb.label)]


def main(argv: list[str] | None = None) -> int:
    """The command line; bad input exits with status 2 and one ``error:`` line (``pipeline.io.errors``)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m hscmae.search", description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, type=Path, help="embedding folder or shard (python -m flows.embed)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query-audio", metavar="CLIP_ID_OR_FILE",
                       help="rank clips by how they look, for this sound: a clip id of the index, "
                            "a .npy of audio embeddings [L] or [Q, L], or an embedding shard/folder")
    query.add_argument("--query-visual", metavar="CLIP_ID_OR_FILE", help="the same, visual query -> audio gallery")
    parser.add_argument("--top", type=int, default=10, help="clips per query (default 10)")
    parser.add_argument("--split", help="search only the clips of this split (train, val, test)")
    parser.add_argument("--backend", choices=("exact", "faiss"), default="exact",
                        help="exact chunked cosine (default) or FAISS (needs faiss-cpu)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    modality = "audio" if args.query_audio is not None else "visual"
    direction = "a2v" if modality == "audio" else "v2a"
    query = args.query_audio or args.query_visual
    with user_errors(args.debug):
        require_positive("--top", args.top)
        if args.backend == "faiss" and not faiss_available():
            raise UserError("--backend faiss: the faiss-cpu package is not installed")
        with named_errors(args.index):  # e.g. an all-zero embedding row
            index = Index.load(args.index, split=args.split)
        vectors, names = _queries(index, query, modality)
        with named_errors(query):
            result = index.search(vectors, min(args.top, len(index)), direction, backend=args.backend)
    gallery = DIRECTIONS[direction][1]
    for name, rows, scores in zip(names, result.index, result.score):
        print(f"query {name}, {modality} -> {gallery} of {len(index)} clips")
        print(f"{'rank':>4}  {'score':>8}  {'clip_id':<32} label")
        for rank, (row, score) in enumerate(zip(rows, scores), start=1):
            label = index.label[row] if index.label[row] is not None else "-"
            print(f"{rank:>4}  {score:8.4f}  {index.clip_id[row]:<32} {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
