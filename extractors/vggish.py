"""The VGGish network and its embedding post-processor, laid out like the public PyTorch port.

State-dict keys match the port's published files, so they load with ``strict=True``:

* ``vggish-10086976.pth`` -> :class:`VGGish` (``features.{0,3,6,8,11,13}.*``, ``embeddings.{0,2,4}.*``);
* ``vggish_pca_params-970ea276.pth`` -> :class:`Postprocessor` (``pca_eigen_vectors [128, 128]``,
  ``pca_means [128]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from extractors import vggish_params as vp
from extractors.logmel import LogMelFrontend
from extractors.registry import VGGISH_PCA_WEIGHTS, VGGISH_WEIGHTS
from extractors.weights import WeightsArg, load_weights
from pipeline.vocab import RANDOM_WEIGHTS

VERSION = "2"  # 2: one example per second of the clip (vggish_params.GRID_HOP_SECONDS), not per 0.96 s

# The VGG stack: numbers are conv output channels, "M" a 2x2 max-pool.
_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
_FLAT = 512 * (vp.NUM_FRAMES // 16) * (vp.NUM_BANDS // 16)  # 512 x 6 x 4 after four pools


def _conv_stack() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for v in _LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """Log-mel examples ``[N, 96, 64]`` (or ``[N, 1, 96, 64]``) -> embeddings ``[N, 128]``.

    Args:
        embedding_relu: keep the ReLU after the 128-d layer, as the PyTorch port (and the
            original TensorFlow release) do; ``False`` gives the linear embedding of the later
            TensorFlow revision. The weights are the same either way.
    """

    def __init__(self, *, embedding_relu: bool = True) -> None:
        super().__init__()
        self.features = _conv_stack()
        self.embeddings = nn.Sequential(
            nn.Linear(_FLAT, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, vp.EMBEDDING_SIZE), nn.ReLU(inplace=True) if embedding_relu else nn.Identity(),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """``examples: [N, 96, 64]`` log-mel -> ``[N, 128]``."""
        x = examples if examples.dim() == 4 else examples.unsqueeze(1)
        x = self.features(x)  # [N, 512, 6, 4]
        # Flatten in (frames, bands, channels) order, as the TensorFlow original did.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)


class Postprocessor(nn.Module):
    """PCA (with whitening) and 8-bit quantisation of VGGish embeddings, as published for AudioSet.

    ``out = round((clip(V @ (e - mu), -2, 2) + 2) * 255 / 4)``, values in ``[0, 255]``.
    Buffers start as the identity transform; load the published parameters with
    ``load_state_dict(..., strict=True)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(vp.PCA_EIGEN_VECTORS_NAME, torch.eye(vp.EMBEDDING_SIZE))
        self.register_buffer(vp.PCA_MEANS_NAME, torch.zeros(vp.EMBEDDING_SIZE))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # The published means may be stored as a column [128, 1] and as numpy arrays.
        for name in (vp.PCA_EIGEN_VECTORS_NAME, vp.PCA_MEANS_NAME):
            key = prefix + name
            if key in state_dict:
                value = torch.as_tensor(state_dict[key], dtype=torch.float32)
                state_dict[key] = value.reshape(-1) if name == vp.PCA_MEANS_NAME else value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings: [N, 128]`` -> quantised ``[N, 128]`` float32 in ``[0, 255]``."""
        vectors = getattr(self, vp.PCA_EIGEN_VECTORS_NAME)
        means = getattr(self, vp.PCA_MEANS_NAME)
        pca = (embeddings.float() - means) @ vectors.T
        clipped = pca.clamp(vp.QUANTIZE_MIN_VAL, vp.QUANTIZE_MAX_VAL)
        scale = 255.0 / (vp.QUANTIZE_MAX_VAL - vp.QUANTIZE_MIN_VAL)
        return torch.round((clipped - vp.QUANTIZE_MIN_VAL) * scale)


class AudioExtractor(nn.Module):
    """16 kHz mono clips -> VGGish embeddings, one per 0.96 s example.

    Build with :func:`build_audio`. ``postprocessor`` is ``None`` for raw embeddings.
    """

    def __init__(self, *, vggish: VGGish, postprocessor: Postprocessor | None, meta: dict[str, Any]) -> None:
        super().__init__()
        self.frontend = LogMelFrontend()
        self.vggish = vggish
        self.postprocessor = postprocessor
        self._meta = meta

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """Log-mel ``examples: [N, 96, 64]`` -> ``[N, 128]`` (quantised when post-processing)."""
        embeddings = self.vggish(examples)
        if self.postprocessor is None:
            return embeddings
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.postprocessor(embeddings.float())

    def meta(self) -> dict[str, Any]:
        """Shard metadata for this extractor."""
        return dict(self._meta)


def build_audio(
    *, weights: WeightsArg = None, pca_weights: WeightsArg = None, postprocess: bool = False,
    embedding_relu: bool = True, seed: int = 0,
) -> AudioExtractor:
    """VGGish with the published weights (or random ones), in eval mode on the CPU.

    Args:
        weights: ``vggish-10086976.pth`` (or ``.safetensors``), ``None`` for the torch hub cache, or
            :data:`pipeline.vocab.RANDOM_WEIGHTS`.
        pca_weights: ``vggish_pca_params-970ea276.pth``; used only when ``postprocess``.
            With random network weights the PCA stays the identity (no published file is read).
        postprocess: apply PCA whitening and 8-bit quantisation, as AudioSet's released features.
        embedding_relu: see :class:`VGGish`.
        seed: initialisation seed, used only for random weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vggish = VGGish(embedding_relu=embedding_relu)
    state, sha = load_weights(VGGISH_WEIGHTS, weights)
    if state is not None:
        vggish.load_state_dict(state, strict=True)
    params: dict[str, Any] = {
        "sample_rate": vp.SAMPLE_RATE, "example_seconds": vp.EXAMPLE_WINDOW_SECONDS, "hop_seconds": vp.GRID_HOP_SECONDS,
        "num_bands": vp.NUM_BANDS,
        "embedding_relu": embedding_relu, "postprocess": postprocess,
    }
    postprocessor = None
    if postprocess:
        postprocessor = Postprocessor()
        pca_state, pca_sha = load_weights(
            VGGISH_PCA_WEIGHTS, RANDOM_WEIGHTS if state is None else pca_weights)
        if pca_state is not None:
            postprocessor.load_state_dict(pca_state, strict=True)
        params["pca_weights"] = pca_sha
    meta = {"extractor": "vggish", "version": VERSION, "params": params, "weights": sha}
    return AudioExtractor(vggish=vggish, postprocessor=postprocessor, meta=meta).eval()
