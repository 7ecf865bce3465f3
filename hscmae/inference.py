"""Inference with a trained student: its output embeddings, its output CCA map, and the device rule.

Imports no training code, so loading a saved model (:mod:`hscmae.embeddings`) does not load the engine.
"""

from __future__ import annotations

import numpy as np
import torch

from hscmae.cca import CanonicalMap, fit_cca_tensors
from hscmae.data import ClipArrays
from hscmae.model import HSCMAE
from pipeline.vocab import MODALITIES


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


@torch.no_grad()
def embed(model: HSCMAE, data: ClipArrays, *, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Embed clean inputs: ``(audio [N, L], visual [N, L])`` float32 output embeddings (not normalised)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pooled = dict(zip(MODALITIES, data.pooled()))
    chunks: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    for start in range(0, len(data), batch_size):
        raw = {m: torch.from_numpy(pooled[m][start:start + batch_size]).to(device) for m in MODALITIES}
        for m, z in model.embed(raw).items():
            chunks[m].append(z.float().cpu().numpy())
    model.train(was_training)
    return tuple(np.concatenate(chunks[m]) for m in MODALITIES)


@torch.no_grad()
def fit_output_map(model: HSCMAE, train: ClipArrays, *, ridge: float) -> None:
    """Install a linear CCA of the clean training latents as ``model``'s output map.

    Without the local (InfoNCE) term nothing ties the two modalities' latent coordinates together:
    deep CCA is blind to any invertible linear map of either side. Its learned latents are
    compared after linear CCA (Andrew et al. 2013), fitted here on the training clips with
    :func:`hscmae.cca.fit_cca_tensors` (relative ridge, variates scaled by their correlations, as the
    post-hoc column and the ``linear-cca`` baseline).
    """
    model.set_output_map(None)
    audio, visual = embed(model, train)
    fitted = fit_cca_tensors(audio, visual, k=model.config.latent, ridges=[ridge])[0]
    model.set_output_map(CanonicalMap.from_cca(fitted, dtype=torch.float32))
