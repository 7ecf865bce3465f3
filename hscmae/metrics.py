"""Cross-modal retrieval metrics: mean average precision, precision at k, precision-recall curve.

Every query ranks the WHOLE gallery by cosine similarity; a gallery item is relevant when
its label equals the query's. Tied scores are one threshold, as in scikit-learn's
``average_precision_score``: every item of a tie group gets the precision measured at the
end of the group, so the result does not depend on how ties happen to be ordered. Cosine scores are float64
and rounded to multiples of ``SCORE_GRID`` (2**-36, about 1.5e-11): a matrix product does not
give bitwise-equal results for equal vectors at different positions or chunk sizes (errors of
about 1e-15), and the rounding makes such numerically equal cosines the exact ties they are.

Queries whose label occurs nowhere in the gallery have no defined average precision. They
are left out of every mean (mAP, P@k, the PR curve), counted in
:attr:`RetrievalMetrics.n_without_relevant`, and :func:`mean_average_precision` warns with
the count; if no query has a relevant item it raises ``ValueError``.

Work is vectorised over queries and chunked: a chunk of ``c`` queries against ``G`` gallery
items holds about ``BYTES_PER_PAIR * c * G`` bytes (float64 scores, sort indices, cumulative
counts and their tie bookkeeping), and ``c`` is chosen so this stays under
``max_chunk_bytes`` (256 MiB by default: 27 queries per chunk for a 100k gallery).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BYTES_PER_PAIR = 96
SCORE_GRID = 2.0**-36
DEFAULT_CHUNK_BYTES = 256 * 2**20
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
    return t / norms


def _labels(x: Array, name: str, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach()).to(device)
    if t.shape != (n,):
        raise ValueError(f"{name}: expected integer labels [{n}], got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"{name}: labels must be integers, got {t.dtype}")
    return t.long()


def _ranked(scores: torch.Tensor, relevant: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank each row of ``scores [c, G]`` (descending; ties by gallery order).

    Returns ``rel [c, G]`` (relevance in rank order), ``hits [c, G]`` (relevant items up to
    each rank), ``prec_end [c, G]`` and ``hits_end [c, G]`` (precision and hits at the end of
    each rank's tie group).
    """
    values, order = torch.sort(scores, dim=1, descending=True, stable=True)
    rel = relevant.gather(1, order)
    hits = rel.cumsum(dim=1)
    size = scores.shape[1]
    positions = torch.arange(size, device=scores.device).expand_as(values)
    is_end = torch.ones_like(rel)
    is_end[:, :-1] = values[:, :-1] != values[:, 1:]
    end_at = torch.where(is_end, positions, size)
    group_end = end_at.flip(1).cummin(dim=1).values.flip(1)
    hits_end = hits.gather(1, group_end).double()
    return rel, hits, hits_end / (group_end + 1), hits_end


def _chunk_metrics(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int], levels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query AP ``[c]`` (NaN without relevant items), P@k ``[c, len(ks)]``, curve ``[c, R]``."""
    rel, hits, prec_end, hits_end = _ranked(scores, relevant)
    n_rel = hits[:, -1:].double()
    ap = (prec_end * rel).sum(dim=1) / n_rel[:, 0]
    p_at_k = torch.stack([hits[:, k - 1].double() / k for k in ks], dim=1) if ks else scores.new_zeros(len(scores), 0)
    # interpolated precision: best precision at any rank whose recall reaches the level
    best_after = prec_end.flip(1).cummax(dim=1).values.flip(1)
    recall_end = (hits_end / n_rel.clamp(min=1)).contiguous()
    first = torch.searchsorted(recall_end, levels.expand(len(scores), -1).contiguous())
    curve = best_after.gather(1, first.clamp(max=scores.shape[1] - 1))
    return ap, p_at_k, curve


def average_precision_from_scores(scores: Array, relevant: Array) -> np.ndarray:
    """Tie-aware average precision of each row: ``scores [Q, G]``, ``relevant [Q, G]`` bool -> ``[Q]``.

    Equals ``sklearn.metrics.average_precision_score(relevant[i], scores[i])`` per row; NaN for
    a row without relevant items.
    """
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    r = torch.as_tensor(np.asarray(relevant, dtype=bool))
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores {tuple(s.shape)} and relevant {tuple(r.shape)} must both be [Q, G]")
    ap, _, _ = _chunk_metrics(s, r, (), torch.zeros(1, dtype=torch.float64))
    return ap.numpy()


def retrieval_metrics(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array, *,
                      ks: Sequence[int] = DEFAULT_KS, recall_levels: Sequence[float] | np.ndarray = DEFAULT_RECALL_LEVELS,
                      chunk_size: int | None = None, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      device: str | torch.device | None = None) -> RetrievalMetrics:
    """All retrieval metrics of one direction in one pass over query chunks.

    Args:
        queries: ``[Nq, D]`` embeddings (NumPy or torch); gallery: ``[Ng, D]``.
        query_labels: ``[Nq]`` integers; gallery_labels: ``[Ng]`` integers.
        ks: ranks for precision at k (each ``1 <= k <= Ng``).
        recall_levels: recall grid of the precision-recall curve, in ``[0, 1]``.
        chunk_size: queries per chunk; by default the most that fit ``max_chunk_bytes``.
        device: where to compute; CUDA when available by default. Scores are float64.
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
    parts = []
    for start in range(0, len(q), step):
        stop = min(start + step, len(q))
        relevant = ql[start:stop, None] == gl[None, :]
        scores = torch.round(q[start:stop] @ g.T / SCORE_GRID) * SCORE_GRID
        parts.append(_chunk_metrics(scores, relevant, ks, levels))
    ap, p_at_k, curve = (torch.cat(p).cpu().numpy() for p in zip(*parts))
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
                               recall_levels=[0.0], chunk_size=chunk_size, device=device)
    _warn_missing(result)
    return result.mean_average_precision


def precision_at_k(queries: Array, gallery: Array, query_labels: Array, gallery_labels: Array, *,
                   ks: Sequence[int] = DEFAULT_KS, chunk_size: int | None = None,
                   device: str | torch.device | None = None) -> dict[int, float]:
    """``{k: mean over queries of the fraction of the top k gallery items that are relevant}``."""
    result = retrieval_metrics(queries, gallery, query_labels, gallery_labels, ks=ks,
                               recall_levels=[0.0], chunk_size=chunk_size, device=device)
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
