"""Cross-modal retrieval metrics: mean average precision, precision at k, precision-recall curve.

Every query ranks the WHOLE gallery by cosine similarity; a gallery item is relevant when
its label equals the query's. Tied scores are one threshold, as in scikit-learn's
``average_precision_score``: every item of a tie group gets the precision measured at the
end of the group, so the result does not depend on how ties happen to be ordered.

How it is computed (one values-only sort of each score row, one binary search per relevant item,
little else): the precision at the end of relevant item ``i``'s tie group is
``#relevant with score >= s_i / #items with score >= s_i``. Each query row is sorted once
(ascending, in place); the relevant scores of the row (a small ``[m, R]`` block, queries grouped
by label) are sorted too. The count of items is a binary search (``searchsorted``) of each
relevant score in the sorted row; the count of relevant items is ``R`` minus its rank among
them, searched for only in rows where two relevant scores tie. Ties come out exact without
any per-position bookkeeping. Scores are float32 cosines; gallery rows that are
equal are scored once and copied (a matrix product can give equal vectors at different
positions results that differ in the last bit), so equal embeddings tie exactly.

Queries whose label occurs nowhere in the gallery have no defined average precision. They
are left out of every mean (mAP, P@k, the PR curve), counted in
:attr:`RetrievalMetrics.n_without_relevant`, and :func:`mean_average_precision` warns with
the count; if no query has a relevant item it raises ``ValueError``.

Work is vectorised over queries and chunked: a chunk of ``c`` queries against ``G`` gallery
items holds about ``BYTES_PER_PAIR * c * G`` bytes (float32 scores, sorted where they lie, or
beside a sorted copy when precision at k needs them in gallery order; the copy of scores that
equal gallery rows need; the relevant block), and ``c`` is chosen so this stays under
``max_chunk_bytes`` (16 MiB by default: 186 queries per chunk for a 5,621-clip gallery, 10 for
100k). Small chunks keep a chunk's scores in the CPU cache from the product to the sort.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BYTES_PER_PAIR = 16
DEFAULT_CHUNK_BYTES = 16 * 2**20
DEFAULT_KS = (1, 5, 10)
DEFAULT_RECALL_LEVELS = np.linspace(0.0, 1.0, 101)

Array = np.ndarray | torch.Tensor


@dataclass
class RetrievalMetrics:
    """Everything one retrieval direction yields.

    Args:
        average_precision: ``[Nq]`` per query, NaN for a query with no relevant gallery item.
        precision_at_k: ``{k: mean precision of the top k}`` over queries with a relevant item;
            ties at rank ``k`` are broken by gallery order.
        recall: ``[R]`` recall levels of the precision-recall curve.
        precision: ``[R]`` interpolated precision (the best precision at recall >= the level)
            of each query, averaged over queries (macro average, as the 11-point IR curve).
    """

    average_precision: np.ndarray
    precision_at_k: dict[int, float]
    recall: np.ndarray
    precision: np.ndarray

    @property
    def n_without_relevant(self) -> int:
        return int(np.isnan(self.average_precision).sum())

    @property
    def mean_average_precision(self) -> float:
        """Mean of the per-query average precision over queries with a relevant item."""
        return float(np.nanmean(self.average_precision))


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _matrix(x: Array, name: str, device: torch.device) -> torch.Tensor:
    """Rows scaled to unit length (in float64), returned as float32 ``[N, D]``."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(device=device, dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected embeddings [N>0, D], got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        raise ValueError(f"{name}: row {int(bad.nonzero()[0])} has non-finite values")
    norms = t.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: row {int((norms[:, 0] == 0).nonzero()[0])} is all zeros (cosine undefined)")
    return (t / norms).float()


def _labels(x: Array, name: str, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach()).to(device)
    if t.shape != (n,):
        raise ValueError(f"{name}: expected integer labels [{n}], got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"{name}: labels must be integers, got {t.dtype}")
    return t.long()


def _sorted_rows(x: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """Each row of ``x [m, n]`` sorted ascending (values only); ``overwrite``: ``x`` may hold the result.

    On the CPU this is NumPy's sort (in place when ``overwrite``), which uses SIMD sorting networks
    where the CPU has them and is many times faster than ``torch.sort`` (which also produces indices);
    elsewhere ``torch.sort``.
    """
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values
    if overwrite:
        x.numpy().sort(axis=1)  # the array shares x's memory
        return x
    return torch.from_numpy(np.sort(x.numpy(), axis=1))


def _above(asc: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[m, K]`` int64: how many values of each row of ``asc [m, n]`` (ascending) are >= each of ``keys [m, K]``.

    ``n - torch.searchsorted(asc, keys, side="left")``; on the CPU NumPy's search row by row, which is
    faster on ascending keys and runs on one thread (no thread-pool hand-offs).
    """
    if asc.device.type != "cpu":
        return asc.shape[1] - torch.searchsorted(asc, keys, side="left")
    values, wanted = asc.numpy(), keys.numpy()
    out = np.empty(wanted.shape, dtype=np.int64)
    for row, (sorted_values, row_keys) in enumerate(zip(values, wanted)):
        out[row] = sorted_values.searchsorted(row_keys, side="left")
    return torch.from_numpy(np.subtract(values.shape[1], out, out=out))


def _hits(rel_asc: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """``[m, R]`` float64: how many of a row's ``count`` relevant scores are >= each of ``rel_asc [m, R]`` (ascending).

    That is ``count - searchsorted(rel_asc, rel_asc, side="left")``; only the rows that hold a tie are searched,
    in the others the j-th score has ``count - j`` (one row of values, expanded, when ``count`` is an int).
    """
    hits = (count - torch.arange(rel_asc.shape[1], dtype=torch.float64, device=rel_asc.device)).expand(rel_asc.shape)
    tied = (rel_asc[:, 1:] == rel_asc[:, :-1]).any(dim=1).nonzero()[:, 0]
    if len(tied):
        count = count if isinstance(count, int) else count[tied]
        hits = hits.clone()
        hits[tied] = (count - torch.searchsorted(rel_asc[tied], rel_asc[tied], side="left")).double()
    return hits


def _tie_ranks(asc: torch.Tensor, rel_asc: torch.Tensor, n_rel: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hits and precision at the end of each relevant item's tie group.

    Args:
        asc: ``[m, G]`` every score of each row, sorted ascending.
        rel_asc: ``[m, R]`` the relevant scores of each row, sorted ascending; with ``n_rel [m]``
            given, padded at the end with ``+inf`` beyond each row's ``n_rel`` relevant items.
    Returns ``hits [m, R]`` (relevant items with a score >= each one's) and ``precision [m, R]``
    (hits over the items with a score >= each one's), both float64 and 0 on padding.
    """
    count = rel_asc.shape[1] if n_rel is None else n_rel[:, None]
    hits = _hits(rel_asc, count)
    precision = hits / _above(asc, rel_asc)
    if n_rel is not None:
        real = torch.arange(rel_asc.shape[1], device=asc.device) < n_rel[:, None]
        hits, precision = hits * real, torch.where(real, precision, 0.0)
    return hits, precision


def _curve(hits: torch.Tensor, precision: torch.Tensor, n_rel: int, levels: torch.Tensor) -> torch.Tensor:
    """``[m, L]`` interpolated precision: the best precision at any threshold whose recall reaches each level.

    Along ascending scores recall does not increase, so the thresholds with recall >= a level
    are a prefix of the relevant items, and the best precision is a running maximum.
    """
    best = precision.cummax(dim=1).values
    recall_up = (hits / n_rel).flip(1).contiguous()
    reached = recall_up.shape[1] - torch.searchsorted(recall_up, levels.expand(len(hits), -1).contiguous())
    return best.gather(1, (reached - 1).clamp(min=0))


def _precision_at_k(scores: torch.Tensor, asc: torch.Tensor, rel_asc: torch.Tensor, relevant_cols: torch.Tensor,
                    ks: Sequence[int]) -> torch.Tensor:
    """``[m, len(ks)]`` share of relevant items among the top k; ties at rank k broken by gallery order.

    ``scores: [m, G]`` in gallery order, ``asc``/``rel_asc`` as in :func:`_tie_ranks` (no padding),
    ``relevant_cols: [G]`` bool.
    """
    size, out = asc.shape[1], []
    for k in ks:
        t = asc[:, size - k: size - k + 1].contiguous()  # the k-th largest score
        above = size - torch.searchsorted(asc, t, side="right")
        tied = size - above - torch.searchsorted(asc, t, side="left")
        hits = rel_asc.shape[1] - torch.searchsorted(rel_asc, t, side="left")  # relevant items >= t
        split = ((above + tied) > k)[:, 0]  # the tie group at rank k does not fit whole
        if split.any():
            rows = split.nonzero()[:, 0]
            eq = scores[rows] == t[rows]
            first = eq & (eq.cumsum(dim=1) <= (k - above[rows]))  # gallery order inside the tie
            rel_above = rel_asc.shape[1] - torch.searchsorted(rel_asc[rows], t[rows], side="right")
            hits[rows] = rel_above + (first & relevant_cols).sum(dim=1, keepdim=True)
        out.append(hits[:, 0].double() / k)
    return torch.stack(out, dim=1) if out else scores.new_zeros(len(scores), 0, dtype=torch.float64)


def average_precision_from_scores(scores: Array, relevant: Array) -> np.ndarray:
    """Tie-aware average precision of each row: ``scores [Q, G]``, ``relevant [Q, G]`` bool -> ``[Q]``.

    Equals ``sklearn.metrics.average_precision_score(relevant[i], scores[i])`` per row; NaN for
    a row without relevant items.
    """
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    r = torch.as_tensor(np.asarray(relevant, dtype=bool))
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores {tuple(s.shape)} and relevant {tuple(r.shape)} must both be [Q, G]")
    n_rel = r.sum(dim=1)
    _, precision = _tie_ranks(_sorted_rows(s), _sorted_rows(torch.where(r, s, torch.inf)), n_rel)
    return (precision.sum(dim=1) / n_rel).numpy()


def retrieval_metrics(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array, *,
                      ks: Sequence[int] = DEFAULT_KS, recall_levels: Sequence[float] | np.ndarray = DEFAULT_RECALL_LEVELS,
                      chunk_size: int | None = None, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      device: str | torch.device | None = None) -> RetrievalMetrics:
    """All retrieval metrics of one direction in one pass over query chunks.

    Args:
        queries: ``[Nq, D]`` embeddings (NumPy or torch); gallery: ``[Ng, D]``.
        query_labels: ``[Nq]`` integers; gallery_labels: ``[Ng]`` integers.
        ks: ranks for precision at k (each ``1 <= k <= Ng``).
        recall_levels: recall grid of the precision-recall curve, in ``[0, 1]`` (empty: no curve).
        chunk_size: queries per chunk; by default the most that fit ``max_chunk_bytes``.
        device: where to compute; CUDA when available by default. Scores are float32 cosines.
    """
    dev = _device(device)
    q = _matrix(queries, "queries", dev)
    g = _matrix(gallery, "gallery", dev)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dims, gallery {g.shape[1]}")
    ql = _labels(query_labels, "query_labels", len(q), dev)
    gl = _labels(gallery_labels, "gallery_labels", len(g), dev)
    ks = tuple(int(k) for k in ks)
    if any(not 1 <= k <= len(g) for k in ks):
        raise ValueError(f"every k in {ks} must be in [1, {len(g)}] (the gallery size)")
    levels = torch.as_tensor(np.asarray(recall_levels, dtype=np.float64), device=dev)
    if levels.ndim != 1 or (levels < 0).any() or (levels > 1).any():
        raise ValueError("recall_levels must be a 1-d grid in [0, 1]")
    step = chunk_size or max(1, max_chunk_bytes // (BYTES_PER_PAIR * len(g)))
    # equal gallery rows are scored once, so that they tie exactly (see the module doc)
    unique, inverse = torch.unique(g, dim=0, return_inverse=True)
    unique, inverse = (g, None) if len(unique) == len(g) else (unique, inverse)
    # queries grouped by label: each chunk is a few runs of queries that share their relevant columns
    order = torch.sort(ql, stable=True).indices
    ap = torch.full((len(q),), torch.nan, dtype=torch.float64, device=dev)
    p_at_k = torch.zeros(len(q), len(ks), dtype=torch.float64, device=dev)
    curve = torch.zeros(len(q), len(levels), dtype=torch.float64, device=dev)
    buffer = torch.empty(min(step, len(q)), len(unique), device=dev)  # every chunk's scores, written in place
    for start in range(0, len(q), step):
        rows = order[start:start + step]
        scores = torch.mm(q[rows], unique.T, out=buffer[:len(rows)])
        scores = scores if inverse is None else scores[:, inverse]
        labels, counts = torch.unique_consecutive(ql[rows], return_counts=True)
        first = 0
        for label, count in zip(labels.tolist(), counts.tolist()):
            run, first = slice(first, first + count), first + count
            relevant_cols = gl == label
            cols = relevant_cols.nonzero()[:, 0]
            n_rel = len(cols)
            if n_rel == 0:
                continue
            rel_asc = _sorted_rows(scores[run].index_select(1, cols), overwrite=True)
            # the run's scores are sorted where they lie, unless precision at k needs them in gallery order
            asc = _sorted_rows(scores[run], overwrite=not ks)
            hits, precision = _tie_ranks(asc, rel_asc)
            ap[rows[run]] = precision.sum(dim=1) / n_rel
            if len(levels):
                curve[rows[run]] = _curve(hits, precision, n_rel, levels)
            if ks:
                p_at_k[rows[run]] = _precision_at_k(scores[run], asc, rel_asc, relevant_cols, ks)
    ap, p_at_k, curve = ap.cpu().numpy(), p_at_k.cpu().numpy(), curve.cpu().numpy()
    valid = ~np.isnan(ap)
    if not valid.any():
        raise ValueError("no query has a relevant gallery item (no query label occurs in gallery_labels)")
    return RetrievalMetrics(
        average_precision=ap,
        precision_at_k={k: float(p_at_k[valid, i].mean()) for i, k in enumerate(ks)},
        recall=levels.cpu().numpy(),
        precision=curve[valid].mean(axis=0),
    )


def _warn_missing(result: RetrievalMetrics) -> None:
    if result.n_without_relevant:
        warnings.warn(f"{result.n_without_relevant} of {len(result.average_precision)} queries have no relevant "
                      "gallery item and are left out of the mean", stacklevel=3)


def mean_average_precision(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array, *,
                           chunk_size: int | None = None, device: str | torch.device | None = None) -> float:
    """mAP of ranking ``gallery [Ng, D]`` by cosine similarity to each of ``queries [Nq, D]``.

    Queries without a relevant gallery item are left out (with a warning); see the module doc.
    """
    result = retrieval_metrics(queries, gallery, query_labels, gallery_labels, ks=(),
                               recall_levels=(), chunk_size=chunk_size, device=device)
    _warn_missing(result)
    return result.mean_average_precision


def precision_at_k(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array, *,
                   ks: Sequence[int] = DEFAULT_KS, chunk_size: int | None = None,
                   device: str | torch.device | None = None) -> dict[int, float]:
    """``{k: mean over queries of the fraction of the top k gallery items that are relevant}``."""
    result = retrieval_metrics(queries, gallery, query_labels, gallery_labels, ks=ks,
                               recall_levels=(), chunk_size=chunk_size, device=device)
    _warn_missing(result)
    return result.precision_at_k


def precision_recall_curve(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array, *,
                           recall_levels: Sequence[float] | np.ndarray = DEFAULT_RECALL_LEVELS,
                           chunk_size: int | None = None, device: str | torch.device | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(recall [R], precision [R])``: interpolated per-query precision, averaged over queries."""
    result = retrieval_metrics(queries, gallery, query_labels, gallery_labels, ks=(),
                               recall_levels=recall_levels, chunk_size=chunk_size, device=device)
    _warn_missing(result)
    return result.recall, result.precision
