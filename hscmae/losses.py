"""HSC-MAE losses at the global, local and sample levels, and their learnable weights.

- Global: deep CCA (Andrew et al. 2013). Minus the *mean* of the top-k canonical correlations of
  the two clean-input embeddings (in [-1, 0], so on the scale of the other terms whatever the latent
  size; the authors' code also divides by the output size), from ridge-regularised covariances in
  float64 (:func:`hscmae.cca.canonical_correlations`: ridge relative to the mean variance).
- Local: affinity-weighted multi-positive InfoNCE. Plain symmetric InfoNCE uses a one-hot target:
  the only positive of audio ``i`` is visual ``i`` (and back). Here the EMA teacher's in-batch cosine
  affinities of the clean clips, in its canonical space (:func:`hscmae.model.teacher_space`), pick,
  for each clip, its ``topk`` nearest other clips as extra positives, weighted by a softmax at
  ``teacher_temperature``; the own pair keeps weight ``self_weight``; the target row is renormalised
  to sum to 1. Semantically close clips are thus no longer pushed apart as negatives. ``topk=0``
  gives back plain InfoNCE exactly.
- Sample: masked reconstruction, mean squared error on the masked entries (or the full vector).
- Distillation (optional): ``1 - cosine`` between the student's latents and the teacher's canonical
  variates, both through the teacher's in-batch canonical map.
- Weights: homoscedastic uncertainty (Kendall et al. 2018), ``sum_i exp(-s_i) L_i + s_i``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hscmae.cca import canonical_correlations


def cca_loss(h1: Tensor, h2: Tensor, *, k: int | None, ridge: float) -> Tensor:
    """Minus the mean of the top-``k`` (``None``: all) canonical correlations, in ``[-1, 0]``; float64 scalar."""
    corr = canonical_correlations(h1, h2, ridge=ridge)
    return -corr[: corr.numel() if k is None else k].mean()


def forced_unit_correlations(batch: int, latent: int) -> int:
    """How many canonical correlations of two ``[batch, latent]`` views equal 1 whatever the data.

    Centred, each view spans ``r = min(latent, batch - 1)`` dimensions of the same ``batch - 1``
    dimensional space, so at least ``2r - (batch - 1)`` directions are shared: ``max(0, 2r - batch + 1)``.
    """
    rank = min(latent, batch - 1)
    return max(0, 2 * rank - (batch - 1))


def soft_targets(teacher: Mapping[str, Tensor], *, topk: int, temperature: float,
                 self_weight: float) -> Tensor:
    """Soft positives ``[B, B]`` (rows sum to 1) from teacher embeddings ``teacher[m]: [B, L]``.

    Affinity of clips ``i, j`` is the mean over modalities of the cosine of their teacher embeddings.
    Row ``i`` puts ``self_weight`` on ``i`` and weight 1, split by a softmax at ``temperature`` over
    the ``topk`` most affine other clips, then renormalises.
    """
    normed = [F.normalize(t.float(), dim=1) for t in teacher.values()]
    b = normed[0].shape[0]
    eye = torch.eye(b, device=normed[0].device)
    k = min(topk, b - 1)
    if k == 0:
        return eye
    affinity = sum(t @ t.T for t in normed) / len(normed)
    affinity = affinity.masked_fill(eye.bool(), float("-inf"))
    values, index = affinity.topk(k, dim=1)
    neighbours = torch.zeros_like(affinity).scatter(1, index, torch.softmax(values / temperature, dim=1))
    return (self_weight * eye + neighbours) / (self_weight + 1.0)


def multi_positive_infonce(audio: Tensor, visual: Tensor, targets: Tensor, *, temperature: float) -> Tensor:
    """Symmetric cross-modal InfoNCE with soft targets.

    Args:
        audio, visual: ``[B, L]`` student embeddings (cosine similarity is used).
        targets: ``[B, B]``, row ``i`` the positive weights of clip ``i`` (e.g. :func:`soft_targets`).
    Returns:
        mean of the audio->visual and visual->audio cross-entropies against ``targets``.
    """
    logits = F.normalize(audio, dim=1) @ F.normalize(visual, dim=1).T / temperature
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def reconstruction_loss(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error of ``pred`` vs ``target`` (``[B, D]``) over entries where ``mask`` (all if None)."""
    err = (pred - target) ** 2
    if mask is None:
        return err.mean()
    weight = mask.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


def distill_loss(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
    """Mean over modalities and clips of ``1 - cos(student, teacher)``; ``[B, K]`` each (e.g. both canonical)."""
    terms = [1.0 - F.cosine_similarity(student[m], teacher[m].detach(), dim=1).mean() for m in student]
    return sum(terms) / len(terms)


class UncertaintyWeights(nn.Module):
    """Learnable log-variances ``s_i``, one per loss term, combined as ``sum exp(-s_i) (L_i + c_i) + s_i``.

    ``offsets[name] = c_i`` shifts a term that can be negative (deep CCA, ``c = 1``) to be non-negative, so its
    optimal ``s_i = log(L_i + c_i)`` exists; the shift does not change the term's gradient.
    """

    def __init__(self, *, names: Sequence[str]) -> None:
        super().__init__()
        self.log_vars = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in names})

    def weights(self) -> dict[str, float]:
        """Current ``exp(-s_i)`` per term."""
        return {n: float(torch.exp(-s.detach())) for n, s in self.log_vars.items()}

    def forward(self, losses: Mapping[str, Tensor], *, offsets: Mapping[str, float], learn: bool) -> Tensor:
        """Weighted total; with ``learn=False`` the plain sum (all ``s_i`` held at 0)."""
        if not learn:
            return sum(v.float() for v in losses.values())
        total = 0.0
        for name, value in losses.items():
            s = self.log_vars[name]
            total = total + torch.exp(-s) * (value.float() + offsets.get(name, 0.0)) + s
        return total
