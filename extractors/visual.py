"""Frame embeddings: torchvision ResNet-50/152 (pooled 2,048-d) and timm ViT-B/16, ViT-S/16 (class token).

Each model uses its own published preprocessing, applied to batches of uint8 frames with tensor
ops (so it runs on the GPU): resize the shorter side, centre-crop, scale to [0, 1], normalise.
The models, their sizes and published weight files are named in :mod:`extractors.registry`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import timm
import timm.data
import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from extractors.registry import VISUAL_MODELS
from extractors.weights import WeightsArg, load_weights

VERSION = "1"


@dataclass(frozen=True)
class Preprocess:
    """A model's eval preprocessing.

    Args:
        resize: the shorter image side after resizing (aspect ratio kept).
        crop: side of the centre crop.
        interpolation: ``bilinear`` or ``bicubic`` (antialiased, as PIL).
        mean, std: per-channel normalisation of [0, 1] RGB.
    """

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _torchvision_model(arch: str) -> tuple[nn.Module, Preprocess]:
    tf = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.transforms()
    preprocess = Preprocess(
        resize=int(tf.resize_size[0]), crop=int(tf.crop_size[0]), interpolation=tf.interpolation.value,
        mean=tuple(tf.mean), std=tuple(tf.std),
    )
    return torchvision.models.get_model(arch, weights=None), preprocess


def _timm_model(arch: str) -> tuple[nn.Module, Preprocess]:
    model = timm.create_model(arch, pretrained=False)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    preprocess = Preprocess(
        resize=math.floor(size / cfg["crop_pct"]), crop=size, interpolation=cfg["interpolation"],
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
    )
    return model, preprocess


def preprocess_frames(frames: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """``frames: [N, H, W, 3]`` uint8 RGB -> ``[N, 3, crop, crop]`` float32, normalised."""
    x = frames.permute(0, 3, 1, 2)
    x = TF.resize(x, [preprocess.resize], interpolation=InterpolationMode(preprocess.interpolation), antialias=True)
    x = TF.center_crop(x, [preprocess.crop])
    x = x.float() / 255.0
    return TF.normalize(x, list(preprocess.mean), list(preprocess.std))


class VisualExtractor(nn.Module):
    """uint8 frames ``[N, H, W, 3]`` -> one embedding per frame ``[N, D]``.

    Build with :func:`build_visual`. ``backbone`` is the model without its classifier:
    ResNet's ``fc`` is ``Identity`` (global average pool, 2,048-d); a ViT's head is reset so its
    output is the final-norm class token.
    """

    def __init__(self, *, name: str, backbone: nn.Module, preprocess: Preprocess, weights_sha256: str) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.preprocess = preprocess
        self.weights_sha256 = weights_sha256

    @property
    def dim(self) -> int:
        """``D``, the embedding size."""
        return VISUAL_MODELS[self.name].dim

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames: [N, H, W, 3]`` uint8 -> ``[N, D]``."""
        return self.backbone(preprocess_frames(frames, self.preprocess))

    def meta(self) -> dict[str, Any]:
        """Shard metadata for this extractor."""
        spec = VISUAL_MODELS[self.name]
        return {
            "extractor": self.name, "version": VERSION, "weights": self.weights_sha256,
            "params": {"library": spec.library, "arch": spec.arch, "dim": self.dim, **asdict(self.preprocess)},
        }


def build_visual(name: str, *, weights: WeightsArg = None, seed: int = 0) -> VisualExtractor:
    """The frame extractor ``name`` (one of :data:`VISUAL_MODELS`), in eval mode on the CPU.

    Args:
        name: ``resnet50``, ``resnet152``, ``vit_b16`` or ``vit_s16``.
        weights: a file, ``None`` for the published file (torch hub / Hugging Face cache), or
            :data:`pipeline.vocab.RANDOM_WEIGHTS`.
        seed: initialisation seed, used only for random weights.
    """
    if name not in VISUAL_MODELS:
        raise ValueError(f"unknown visual model {name!r}; choose one of {sorted(VISUAL_MODELS)}")
    spec = VISUAL_MODELS[name]
    state, sha = load_weights(spec.weights, weights)  # a missing file fails before any build
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, preprocess = (_torchvision_model if spec.library == "torchvision" else _timm_model)(spec.arch)
    if state is not None:
        model.load_state_dict(state, strict=True)
    if spec.library == "torchvision":
        model.fc = nn.Identity()
    else:
        model.reset_classifier(0)
    return VisualExtractor(name=name, backbone=model, preprocess=preprocess, weights_sha256=sha).eval()
