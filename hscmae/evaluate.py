"""Cross-modal retrieval evaluation of one split: audio->visual and visual->audio.

Metric names (keys of :attr:`Evaluation.metrics`): ``a2v_map``, ``v2a_map``, ``mean_map``,
``a2v_p@k``, ``v2a_p@k``, ``mean_p@k`` (``mean_*``: the average of the two directions); after
post-hoc linear CCA the same names prefixed ``cca_``. Within a direction every query ranks the
whole gallery of the other modality (the query's own pair included).

Linear CCA for retrieval (the ``linear-cca`` baseline and the post-hoc step) is fit on TRAIN,
its ridge picked by mean mAP on VAL from :data:`CCA_RIDGES` (or set: :func:`candidate_ridges`), and
each canonical variate is scaled by its canonical correlation, so weakly correlated directions weigh
less in the cosine.

Partial observation (the sample-level claim): :func:`evaluate_partial` re-embeds the test clips
with a fraction of each clip turned off, independently per modality, the same seeded draw for every
method: of per-second features a fraction of each clip's valid seconds (:func:`drop_seconds`); of
clip-level features (one second per clip, where no second can go) a fraction of the entries of each
clip's vector, set to the training mean (:func:`drop_entries`, what a masked entry is in training).
It reports ``drop<pct>_{a2v,v2a,mean}_map`` (and ``drop<pct>_cca_...`` after the post-hoc CCA).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from hscmae.cca import LinearCCA, fit_cca_path
from hscmae.data import ClipArrays
from hscmae.metrics import DEFAULT_KS, DEFAULT_RECALL_LEVELS, RetrievalMetrics, retrieval_metrics
from hscmae.model import seconds_dropped
from pipeline.vocab import DIRECTIONS

POSTHOC_PREFIX = "cca_"
CCA_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PARTIAL_DROPS = (0.3, 0.5)
PARTIAL_SEED = 0

Embedder = Callable[[ClipArrays], tuple[np.ndarray, np.ndarray]]


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
    found = _directions(audio, visual, labels, (), ())
    return float(np.mean([r.mean_average_precision for r in found.values()]))


def _add(out: Evaluation, found: dict[str, RetrievalMetrics], prefix: str) -> None:
    for name, result in found.items():
        out.metrics[f"{prefix}{name}_map"] = result.mean_average_precision
        for k, value in result.precision_at_k.items():
            out.metrics[f"{prefix}{name}_p@{k}"] = value
        out.curves[f"{prefix}{name}"] = {"recall": result.recall.tolist(), "precision": result.precision.tolist()}
    for name in ("map", *(f"p@{k}" for k in found["a2v"].precision_at_k)):
        out.metrics[f"{prefix}mean_{name}"] = float(np.mean([out.metrics[f"{prefix}{d}_{name}"] for d in DIRECTIONS]))


def candidate_ridges(chosen: float | None) -> tuple[float, ...]:
    """The ridges a linear CCA is selected from: ``chosen`` (``MethodConfig.cca_ridge``) alone, else
    :data:`CCA_RIDGES`."""
    return CCA_RIDGES if chosen is None else (chosen,)


def select_cca(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], val_labels: np.ndarray, *,
               k: int, ridges: Sequence[float] = CCA_RIDGES) -> tuple[LinearCCA, list[dict[str, float]]]:
    """Fit CCA on ``train = (audio [Nt, Da], visual [Nt, Dv])`` per ridge; keep the best mean mAP on ``val``.

    Returns the chosen fit and one ``{"ridge", "val_score"}`` entry per ridge.
    """
    fitted = fit_cca_path(*train, k=k, ridges=ridges)
    history = [{"ridge": r, "val_score": retrieval_score(*c.embed(*val), val_labels)}
               for r, c in zip(ridges, fitted)]
    return fitted[int(np.argmax([h["val_score"] for h in history]))], history


def evaluate(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, *, posthoc: LinearCCA | None = None,
             ks: Sequence[int] = DEFAULT_KS,
             recall_levels: np.ndarray | Sequence[float] = DEFAULT_RECALL_LEVELS) -> Evaluation:
    """Retrieval metrics of one split, plain and (when ``posthoc`` is given) after that CCA.

    Args:
        audio: ``[N, L]`` and visual: ``[N, L]`` embeddings of the evaluated split; labels: ``[N]``.
        posthoc: a CCA fit on TRAIN embeddings (see :func:`select_cca`); ``None`` skips the ``cca_`` metrics.
    """
    out = Evaluation()
    _add(out, _directions(audio, visual, labels, ks, recall_levels), "")
    if posthoc is not None:
        _add(out, _directions(*posthoc.embed(audio, visual), labels, ks, recall_levels), POSTHOC_PREFIX)
    return out


def drop_seconds(data: ClipArrays, fraction: float, *, seed: int = PARTIAL_SEED) -> ClipArrays:
    """``data`` with :func:`hscmae.model.seconds_dropped` of each clip's valid seconds turned off, per modality.

    At least one second of every clip stays valid. Which seconds go is a seeded uniform draw,
    independent per clip and modality; features are untouched (only the ``[N, T]`` masks change).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng([seed, round(fraction * 1000)])
    masks = {}
    for name in ("audio_valid", "visual_valid"):
        valid = getattr(data, name)
        count = valid.sum(axis=1)
        n_drop = seconds_dropped(count, fraction).astype(int)
        # rank the valid seconds of each row in a random order; drop the first n_drop of them
        keys = np.where(valid, rng.random(valid.shape), np.inf)
        rank = np.argsort(np.argsort(keys, axis=1), axis=1)
        masks[name] = valid & (rank >= n_drop[:, None])
    return replace(data, **masks)


def drop_entries(data: ClipArrays, fraction: float, *, fill: Mapping[str, np.ndarray], modalities: Sequence[str],
                 seed: int = PARTIAL_SEED) -> ClipArrays:
    """``data`` with :func:`hscmae.model.seconds_dropped` of each clip's ``D`` entries set to ``fill[m]`` (``[D]``),
    for each modality in ``modalities`` (clip-level ones: features ``[N, 1, D]``).

    ``fill``: the training mean of each modality's pooled features, which is what a masked entry is in
    training (0 after standardisation). Which entries go is a seeded uniform draw, independent per clip
    and modality.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng([seed, round(fraction * 1000), 1])
    changed = {}
    for m in modalities:
        x = data.features(m)
        count = int(seconds_dropped(np.int64(x.shape[2]), fraction))
        rank = np.argsort(np.argsort(rng.random((len(x), x.shape[2])), axis=1), axis=1)
        changed[m] = np.where((rank < count)[:, None, :], np.asarray(fill[m], dtype=x.dtype), x)
    return replace(data, **changed) if changed else data


def evaluate_partial(embedder: Embedder, test: ClipArrays, *, fill: Mapping[str, np.ndarray],
                     posthoc: LinearCCA | None = None, drops: Sequence[float] = PARTIAL_DROPS) -> dict[str, float]:
    """mAP of ``test`` re-embedded by ``embedder`` (clips -> ``(audio [N, L], visual [N, L])``) partially observed:
    seconds dropped (:func:`drop_seconds`), and entries of the clip-level modalities
    (``test.clip_level_modalities``) set to ``fill`` (the training means ``[D]``, :func:`drop_entries`).

    Returns ``{"drop30_a2v_map": ..., "drop30_mean_map": ..., "drop30_cca_mean_map": ...}`` per fraction
    (the ``cca_`` entries only with ``posthoc``).
    """
    out: dict[str, float] = {}
    for fraction in drops:
        partial = drop_entries(drop_seconds(test, fraction), fraction, fill=fill,
                               modalities=test.clip_level_modalities)
        found = evaluate(*embedder(partial), test.label_id, posthoc=posthoc, ks=(), recall_levels=())
        out.update({f"drop{round(fraction * 100)}_{name}": value for name, value in found.metrics.items()})
    return out
