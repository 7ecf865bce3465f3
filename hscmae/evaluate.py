"""Cross-modal retrieval evaluation of one split: audio->visual and visual->audio.

Metric names (keys of :attr:`Evaluation.metrics`): ``a2v_map``, ``v2a_map``, ``mean_map``,
``a2v_p@k``, ``v2a_p@k``, ``mean_p@k`` (``mean_*``: the average of the two directions); with post-hoc linear CCA (fit on TRAIN embeddings, applied to the
evaluated split) the same names prefixed ``cca_``. Within a direction every query ranks the
whole gallery of the other modality (the query's own pair included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hscmae.cca import fit_cca
from hscmae.metrics import DEFAULT_KS, DEFAULT_RECALL_LEVELS, RetrievalMetrics, retrieval_metrics

DIRECTIONS = ("a2v", "v2a")
POSTHOC_PREFIX = "cca_"
POSTHOC_RIDGE = 1e-3


@dataclass
class Evaluation:
    """``metrics``: name -> value; ``curves``: name (``a2v``, ``cca_v2a``...) -> ``{"recall", "precision"}`` lists."""

    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def _directions(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, ks: Sequence[int],
                levels: np.ndarray | Sequence[float]) -> dict[str, RetrievalMetrics]:
    return {"a2v": retrieval_metrics(audio, visual, labels, labels, ks=ks, recall_levels=levels),
            "v2a": retrieval_metrics(visual, audio, labels, labels, ks=ks, recall_levels=levels)}


def retrieval_score(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> float:
    """Mean of a2v and v2a mAP: the model-selection score (``audio, visual: [N, L]``, ``labels: [N]``)."""
    found = _directions(audio, visual, labels, (), [0.0])
    return float(np.mean([r.mean_average_precision for r in found.values()]))


def _add(out: Evaluation, found: dict[str, RetrievalMetrics], prefix: str) -> None:
    for name, result in found.items():
        out.metrics[f"{prefix}{name}_map"] = result.mean_average_precision
        for k, value in result.precision_at_k.items():
            out.metrics[f"{prefix}{name}_p@{k}"] = value
        out.curves[f"{prefix}{name}"] = {"recall": result.recall.tolist(), "precision": result.precision.tolist()}
    for name in ("map", *(f"p@{k}" for k in found["a2v"].precision_at_k)):
        out.metrics[f"{prefix}mean_{name}"] = float(np.mean([out.metrics[f"{prefix}{d}_{name}"] for d in DIRECTIONS]))


def evaluate(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, *,
             train: tuple[np.ndarray, np.ndarray] | None = None, ks: Sequence[int] = DEFAULT_KS,
             recall_levels: np.ndarray | Sequence[float] = DEFAULT_RECALL_LEVELS,
             posthoc_ridge: float = POSTHOC_RIDGE) -> Evaluation:
    """Retrieval metrics of one split, plain and (when ``train`` is given) after post-hoc CCA.

    Args:
        audio: ``[N, L]`` and visual: ``[N, L]`` embeddings of the evaluated split; labels: ``[N]``.
        train: ``(audio [Nt, L], visual [Nt, L])`` TRAIN embeddings to fit the post-hoc CCA on
            (``L`` canonical dims, relative ridge ``posthoc_ridge``); ``None`` skips it.
    """
    out = Evaluation()
    _add(out, _directions(audio, visual, labels, ks, recall_levels), "")
    if train is not None:
        cca = fit_cca(train[0], train[1], k=min(audio.shape[1], visual.shape[1], len(train[0])), ridge=posthoc_ridge)
        found = _directions(cca.transform_x(audio), cca.transform_y(visual), labels, ks, recall_levels)
        _add(out, found, POSTHOC_PREFIX)
    return out
