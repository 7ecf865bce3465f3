"""Per-epoch figures that show whether each level of HSC-MAE is alive, dead or dominant.

Computed during training (:func:`hscmae.train.fit` stores :func:`epoch_figures` and the engine's
``grad_share`` in each epoch's history entry) and
written into the run directory by :func:`write` (``diagnostics.jsonl`` and ``plots/diagnostics.png``).
See ``docs/diagnostics.md`` for how to read them.

- ``grad_share``: per loss term, its share of the summed gradient norms on the student encoders
  (each term as weighted in the total), on the epoch's first batch.
- ``weights``: the uncertainty weights ``exp(-s_i)`` (already in the history).
- ``purity_teacher`` / ``purity_raw``: the share of soft-positive weight (own pair left out) that
  falls on clips of the same class, with affinities from the teacher's canonical space or from the
  standardised raw inputs, on a fixed training batch. Labels are used for this figure only.
- ``val_canonical_corr``: canonical correlations of the validation latents under a linear CCA
  fitted on training latents (descending; their mean is plotted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from hscmae.cca import fit_cca  # noqa: E402
from hscmae.config import LossConfig  # noqa: E402
from hscmae.data import ClipArrays  # noqa: E402
from hscmae.inference import embed  # noqa: E402
from hscmae.losses import soft_targets  # noqa: E402
from hscmae.model import HSCMAE, teacher_space  # noqa: E402
from pipeline.io.atomic import atomic_path  # noqa: E402
from pipeline.vocab import MODALITIES  # noqa: E402

FIELDS = ("grad_share", "weights", "purity_teacher", "purity_raw", "val_canonical_corr")


def gradient_shares(terms: Mapping[str, Tensor], params: Sequence[torch.nn.Parameter]) -> dict[str, float]:
    """``{term: ||d term / d params|| / sum over terms}``; the graph is kept for the real backward pass."""
    norms = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    total = sum(norms.values()) or 1.0
    return {name: n / total for name, n in norms.items()}


def positive_purity(targets: Tensor, labels: Tensor) -> float:
    """Share of the off-diagonal weight of ``targets: [B, B]`` on pairs with equal ``labels: [B]``."""
    off = targets * (1.0 - torch.eye(len(labels), device=targets.device))
    same = (labels[:, None] == labels[None, :]).to(off.dtype)
    return float((off * same).sum() / off.sum().clamp(min=1e-12))


def validation_correlations(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
                            ridge: float) -> list[float]:
    """Per-dimension correlation of val canonical variates ``[K]`` (descending), CCA fitted on ``train``.

    ``train``/``val``: (audio ``[N, L]``, visual ``[N, L]``) latents.
    """
    k = min(train[0].shape[1], train[1].shape[1], len(train[0]) - 1)
    cca = fit_cca(*train, k=k, ridge=ridge)
    return sorted((float(c) for c in cca.heldout_correlations(*val)), reverse=True)


@torch.no_grad()
def epoch_figures(student: HSCMAE, teacher: torch.nn.ModuleDict | None, data: dict[str, Tensor], *,
                  loss: LossConfig, batch_size: int, train_sample: ClipArrays,
                  val_embedding: tuple[np.ndarray, np.ndarray]) -> dict[str, float | list[float]]:
    """Soft-positive purity on one training batch (teacher canonical space vs raw-input neighbours)
    and the validation canonical correlations (CCA fit on ``train_sample``'s latents).

    ``data``: the run's training tensors (``m: [N, D]`` raw pooled, ``label: [N]``); ``loss``: the method's settings.
    """
    g = torch.Generator().manual_seed(0)  # the same clips every epoch; leaves the run's generator alone
    n = len(data["audio"])
    idx = torch.randperm(n, generator=g)[:min(batch_size, n)].to(data["audio"].device)
    batch = {k: v[idx] for k, v in data.items() if k in (*MODALITIES, "label")}
    clean = student.standardize(batch)
    topk = loss.topk or LossConfig.topk  # methods without soft positives (topk=0) are rated at the default k
    figures = {"purity_raw": positive_purity(
        soft_targets(clean, topk=topk, temperature=loss.teacher_temperature, self_weight=0.0), batch["label"])}
    if teacher is not None:
        canonical, _ = teacher_space(teacher, clean, ridge=loss.cca_ridge)
        figures["purity_teacher"] = positive_purity(
            soft_targets(canonical, topk=topk, temperature=loss.teacher_temperature, self_weight=0.0), batch["label"])
    figures["val_canonical_corr"] = validation_correlations(embed(student, train_sample), val_embedding,
                                                            ridge=loss.cca_ridge)
    return figures


def rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method x seed x epoch: ``method, seed, epoch`` and the :data:`FIELDS` present."""
    return [{"method": r["method"], "seed": r["seed"], "epoch": h["epoch"],
             **{f: h[f] for f in FIELDS if f in h}}
            for r in runs for h in r.get("history", [])]


def write(runs: Sequence[Mapping[str, Any]], run_dir: Path, title: str) -> None:
    """``run_dir/diagnostics.jsonl`` and ``run_dir/plots/diagnostics.png`` from the runs' histories."""
    table = rows(runs)
    with atomic_path(run_dir / "diagnostics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in table))
    with atomic_path(run_dir / "plots" / "diagnostics.png") as tmp:
        plot(table, tmp, title)


def _mean_curves(table: Sequence[Mapping[str, Any]], method: str, value) -> tuple[list[int], dict[str, list[float]]]:
    """Epochs and ``{series: mean over seeds per epoch}`` of ``value(row) -> {series: float}``."""
    by_epoch: dict[int, list[dict[str, float]]] = {}
    for row in table:
        if row["method"] == method:
            found = value(row)
            if found:
                by_epoch.setdefault(row["epoch"], []).append(found)
    epochs = sorted(by_epoch)
    names = sorted({n for rows_ in by_epoch.values() for r in rows_ for n in r})
    return epochs, {n: [float(np.mean([r[n] for r in by_epoch[e] if n in r])) for e in epochs] for n in names}


def plot(table: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """One row of four panels per trained method: gradient shares, weights, purity, val canonical corr."""
    methods = list(dict.fromkeys(row["method"] for row in table))
    fig, axes = plt.subplots(max(1, len(methods)), 4, figsize=(16, 2.6 * max(1, len(methods))), squeeze=False)
    panels = (
        ("gradient share on encoders", lambda r: r.get("grad_share")),
        ("learned weight exp(-s)", lambda r: r.get("weights")),
        ("same-class share of soft positives",
         lambda r: {k: r[f"purity_{k}"] for k in ("teacher", "raw") if f"purity_{k}" in r}),
        ("val canonical correlation", lambda r: {"mean": float(np.mean(r["val_canonical_corr"])),
                                                  "top": r["val_canonical_corr"][0]}
         if r.get("val_canonical_corr") else None),
    )
    for row_axes, method in zip(axes, methods):
        for ax, (label, value) in zip(row_axes, panels):
            epochs, curves = _mean_curves(table, method, value)
            for name, ys in curves.items():
                ax.plot(epochs, ys, label=name)
            ax.set_title(f"{method}: {label}", fontsize=8)
            ax.tick_params(labelsize=7)
            if curves:
                ax.legend(fontsize=6)
    fig.suptitle(f"Diagnostics per epoch (mean over seeds) — {title}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
