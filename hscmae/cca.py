"""Linear CCA in closed form (ridge-regularised, float64).

Used as the ``linear-cca`` baseline on pooled raw features and post hoc on learned embeddings:
always fit on TRAIN embeddings, then transform any split.

With centred ``X [N, Dx]``, ``Y [N, Dy]``: ``Cxx = X'X/(N-1) + r_x I`` where
``r_x = ridge * trace(X'X/(N-1)) / Dx`` (the ridge is relative to the mean variance, so it means
the same for 128-d and 2048-d inputs), likewise ``Cyy``; ``T = Cxx^-1/2 Cxy Cyy^-1/2 = U S V'``;
projections ``A = Cxx^-1/2 U_k``, ``B = Cyy^-1/2 V_k``; canonical correlations ``S_k``.
Computed through thin SVDs of the centred data, so 2048-d inputs with fewer rows stay cheap
(nothing ``D x D`` is ever formed). The fit runs in torch (:func:`fit_cca_tensors`): on the data's
device, and on torch's own CPU threads. NumPy's BLAS keeps a second pool of spinning threads, and
calling it between torch operations in every training step (the teacher's batch CCA) made the
two pools fight over the cores: 100 ms of a 320 ms step on 2 cores (``bench/bench_train.py``).

Everything CCA lives here: the closed-form fit (:func:`fit_cca_tensors`, :class:`LinearCCA` for
evaluation in float64 NumPy), the one torch map of a fit (:class:`CanonicalMap`: the teacher's
canonical space, the distillation targets and a model's output map), and the canonical
correlations of a batch (:func:`canonical_correlations`, differentiable: the deep-CCA loss) with
the same relative ridge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from torch import Tensor


@dataclass
class LinearCCA:
    """A fitted linear CCA: ``transform_*`` maps ``[N, D]`` to ``[N, k]`` canonical variates.

    Args:
        mean_x: ``[Dx]``; mean_y: ``[Dy]`` (training means).
        proj_x: ``[Dx, k]``; proj_y: ``[Dy, k]``.
        correlations: ``[k]`` regularised canonical correlations, descending.
    """

    mean_x: np.ndarray
    mean_y: np.ndarray
    proj_x: np.ndarray
    proj_y: np.ndarray
    correlations: np.ndarray

    def transform_x(self, x: np.ndarray | torch.Tensor, *, scale: bool = False) -> np.ndarray:
        """``x: [N, Dx]`` -> ``[N, k]`` float64; ``scale`` multiplies each variate by its correlation."""
        return (_tensor64(x, "x").cpu().numpy() - self.mean_x) @ self.proj_x * (self.correlations if scale else 1.0)

    def transform_y(self, y: np.ndarray | torch.Tensor, *, scale: bool = False) -> np.ndarray:
        """``y: [N, Dy]`` -> ``[N, k]`` float64; ``scale`` multiplies each variate by its correlation."""
        return (_tensor64(y, "y").cpu().numpy() - self.mean_y) @ self.proj_y * (self.correlations if scale else 1.0)

    def embed(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The paired views as retrieval compares them: ``[N, k]`` variates of each, scaled by the correlations."""
        return self.transform_x(x, scale=True), self.transform_y(y, scale=True)

    def heldout_correlations(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> np.ndarray:
        """Correlation ``[k]`` of each pair of canonical variates of other paired data ``x: [N, Dx]``, ``y: [N, Dy]``
        (e.g. validation latents under a fit on training ones)."""
        a, v = self.transform_x(x), self.transform_y(y)
        a, v = a - a.mean(0), v - v.mean(0)
        return (a * v).sum(0) / np.sqrt((a * a).sum(0) * (v * v).sum(0)).clip(min=1e-12)

    def save(self, path: str) -> None:
        """Write the fitted arrays as safetensors."""
        save_file({k: np.ascontiguousarray(v) for k, v in vars(self).items()}, path)

    @classmethod
    def load(cls, path: str) -> LinearCCA:
        return cls(**load_file(path))


def _tensor64(a: np.ndarray | torch.Tensor, name: str) -> Tensor:
    """``a: [N, D]`` as a float64 tensor (a tensor stays on its device)."""
    out = a.detach().to(torch.float64) if isinstance(a, torch.Tensor) else \
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # native byte order, one copy at most
    if out.ndim != 2:
        raise ValueError(f"{name}: expected [N, D], got shape {tuple(out.shape)}")
    return out


def _spectrum(centred: Tensor, ridge_zero: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Thin SVD ``centred = U S V'`` with null directions dropped: ``U S``, ``V``, ``S^2/(N-1)`` and the mean variance.

    Comes from the eigendecomposition of the smaller of ``X'X`` and ``XX'``; the regularised
    covariance ``C = V diag(S^2/(N-1)) V' + r I`` then has ``C^-1/2 V = V diag((S^2/(N-1) + r)^-1/2)``.
    """
    n, d = centred.shape
    wide = n < d
    values, vectors = torch.linalg.eigh(centred @ centred.T if wide else centred.T @ centred)
    mean_var = values.sum() / (n - 1) / d
    keep = values > 1e-12 * values[-1]
    if ridge_zero and (n - 1 < d or not bool(keep.all())):
        raise ValueError(f"covariance is singular ({n} rows for {d} dims or collinear columns); use ridge > 0")
    values, vectors = values[keep], vectors[:, keep]
    s = values.sqrt()
    us, v = (vectors * s, centred.T @ vectors / s) if wide else (centred @ vectors, vectors)
    return us, v, values / (n - 1), mean_var


def fit_cca_tensors(x: np.ndarray | Tensor, y: np.ndarray | Tensor, *, k: int,
                    ridges: Sequence[float]) -> list[dict[str, Tensor]]:
    """Fit linear CCA on paired training data ``x: [N, Dx]``, ``y: [N, Dy]`` keeping ``k`` dims, once per ridge.

    Each ``ridge >= 0`` is relative to each side's mean variance; ``ridge=0`` is plain CCA and
    needs full-rank covariances (``N > D``). The decompositions are shared by all ridges. Every fit
    is ``k`` wide: past the data's rank (collinear columns, or ``N - 1 < k`` rows) the directions
    are zero with correlation 0, so a small training split still gives a ``k``-wide map. Computed
    in float64 on the device of ``x`` (tensors stay there, so a CUDA batch makes no host round
    trip). Returns, per ridge, :class:`LinearCCA`'s fields as float64 tensors.
    """
    x = _tensor64(x, "x")
    y = _tensor64(y, "y").to(x.device)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y need the same number of rows (>= 2), got {len(x)} and {len(y)}")
    if not 1 <= k <= min(x.shape[1], y.shape[1]):
        raise ValueError(f"k={k} must be in [1, min(Dx, Dy)={min(x.shape[1], y.shape[1])}]")
    if not ridges or min(ridges) < 0:
        raise ValueError(f"ridges must be >= 0, got {list(ridges)}")
    mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
    usx, vx, var_x, mean_var_x = _spectrum(x - mean_x, min(ridges) == 0)
    usy, vy, var_y, mean_var_y = _spectrum(y - mean_y, min(ridges) == 0)
    cross = usx.T @ usy / (len(x) - 1)
    fitted = []
    for ridge in ridges:
        # T = Cxx^-1/2 Cxy Cyy^-1/2 = Vx M Vy' with the small M below; only the data's span matters
        fx, fy = (var_x + ridge * mean_var_x).rsqrt(), (var_y + ridge * mean_var_y).rsqrt()
        p, s, qt = torch.linalg.svd(fx[:, None] * cross * fy[None, :], full_matrices=False)
        # past the data's rank (collinear columns): zero directions with correlation 0, so every fit is k wide
        kk = min(k, len(s))
        fitted.append({"mean_x": mean_x, "mean_y": mean_y,
                       "proj_x": F.pad(vx @ (fx[:, None] * p[:, :kk]), (0, k - kk)),
                       "proj_y": F.pad(vy @ (fy[:, None] * qt[:kk].T), (0, k - kk)),
                       "correlations": F.pad(s[:kk], (0, k - kk))})
    return fitted


def fit_cca_path(x: np.ndarray | Tensor, y: np.ndarray | Tensor, *, k: int, ridges: Sequence[float]) -> list[LinearCCA]:
    """:func:`fit_cca_tensors` as fitted :class:`LinearCCA` objects (NumPy arrays)."""
    return [LinearCCA(**{name: t.cpu().numpy() for name, t in fit.items()})
            for fit in fit_cca_tensors(x, y, k=k, ridges=ridges)]


def fit_cca(x: np.ndarray | Tensor, y: np.ndarray | Tensor, *, k: int, ridge: float = 1e-3) -> LinearCCA:
    """Fit linear CCA with one ``ridge`` (see :func:`fit_cca_tensors`)."""
    return fit_cca_path(x, y, k=k, ridges=[ridge])[0]


class CanonicalMap:
    """``z[m]: [B, L] -> (z[m] - mean[m]) @ matrix[m]: [B, K]`` in torch, differentiable in ``z``.

    The torch form of a fitted linear CCA, ``matrix`` holding the projections scaled by their
    correlations (audio: the fit's x side, visual: its y side).
    """

    def __init__(self, mean: Mapping[str, Tensor], matrix: Mapping[str, Tensor]) -> None:
        self.mean, self.matrix = dict(mean), dict(matrix)

    @classmethod
    def from_cca(cls, fitted: Mapping[str, Tensor], *, dtype: torch.dtype) -> CanonicalMap:
        """A fit's centring and correlation-scaled projections, from :func:`fit_cca_tensors`, as ``dtype``
        tensors on the fit's device."""
        return cls({"audio": fitted["mean_x"].to(dtype), "visual": fitted["mean_y"].to(dtype)},
                   {"audio": (fitted["proj_x"] * fitted["correlations"]).to(dtype),
                    "visual": (fitted["proj_y"] * fitted["correlations"]).to(dtype)})

    def __call__(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: (z[m] - self.mean[m]) @ self.matrix[m] for m in self.mean}


@torch.no_grad()
def canonical_space(latent: Mapping[str, Tensor], *, ridge: float) -> tuple[dict[str, Tensor], CanonicalMap]:
    """The canonical space of one batch: a linear CCA fitted on ``latent[m]: [B, L]`` (audio and visual).

    Returns the canonical variates ``[B, K]`` (``K = min(L, B - 1)``, each scaled by its canonical
    correlation, as in evaluation) and the map that produced them, to apply to other latents.
    """
    audio, visual = latent["audio"], latent["visual"]
    k = min(audio.shape[1], visual.shape[1], len(audio) - 1)
    cmap = CanonicalMap.from_cca(fit_cca_tensors(audio, visual, k=k, ridges=[ridge])[0], dtype=audio.dtype)
    return cmap(latent), cmap


def _whitened_cross_covariance(h1: Tensor, h2: Tensor, *, ridge: float) -> Tensor:
    """``T = L1^-1 S12 L2^-T`` (float64), ``L1, L2`` the Cholesky factors of the ridge covariances."""
    h1, h2 = h1.double(), h2.double()
    denom = max(h1.shape[0] - 1, 1)
    h1 = h1 - h1.mean(dim=0)
    h2 = h2 - h2.mean(dim=0)
    s11, s22 = h1.T @ h1 / denom, h2.T @ h2 / denom
    # ridge relative to each side's mean variance, as in fit_cca_tensors
    s11 = s11 + ridge * torch.diagonal(s11).mean() * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    s22 = s22 + ridge * torch.diagonal(s22).mean() * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = h1.T @ h2 / denom
    # Any whitening works: T's singular values (the canonical correlations) do not depend on it.
    l1 = torch.linalg.cholesky(s11)
    l2 = torch.linalg.cholesky(s22)
    left = torch.linalg.solve_triangular(l1, s12, upper=False)
    return torch.linalg.solve_triangular(l2, left.T, upper=False).T


def canonical_correlations(h1: Tensor, h2: Tensor, *, ridge: float) -> Tensor:
    """Canonical correlations of ``h1: [B, L1]`` and ``h2: [B, L2]``, descending, float64 ``[min(L1, L2)]``.

    Covariances are centred, divided by ``B - 1`` and get ``ridge * (mean variance) * I`` added.
    Whitening uses Cholesky factors and the correlations are singular values, whose gradient
    ``U_k V_k^T`` needs no eigenvalue gaps, so rank-deficient batches (fewer rows than dims,
    repeated rows) stay finite.
    """
    return torch.linalg.svdvals(_whitened_cross_covariance(h1, h2, ridge=ridge))
