"""The extractors' registry, torch-free: each visual model's library, architecture, embedding size and
published weight file, and every published weight file by the name ``python -m extractors.weights fetch`` takes.

Command lines (``--visual-model`` choices) and the flows' run forms read the names here without
importing torch; :mod:`extractors.visual` builds the models from the same entries, and
:mod:`extractors.weights` finds and fetches their files. tests/test_visual.py checks each file
against torchvision's and timm's own records.
"""

from __future__ import annotations

from dataclasses import dataclass

from extractors import vggish_params as vp

TORCH_HUB_URL = "https://download.pytorch.org/models/"  # torchvision's published ImageNet weights


@dataclass(frozen=True)
class WeightsSpec:
    """Where a published weight file comes from.

    Args:
        file_name: the published file name (as in the torch hub cache).
        url: where to download it.
        hf_hub_id: the Hugging Face repository that also serves it (timm models), if any.
    """

    file_name: str
    url: str
    hf_hub_id: str | None = None


@dataclass(frozen=True)
class VisualSpec:
    """One supported frame extractor.

    Args:
        library: ``torchvision`` or ``timm``.
        arch: the model's name in that library.
        dim: ``D``, the embedding size.
        weights: its published weight file (torchvision: ``IMAGENET1K_V1``, the original ImageNet
            release; timm: the model's pretrained tag on the Hugging Face hub).
    """

    library: str
    arch: str
    dim: int
    weights: WeightsSpec


def _torch_hub(file_name: str) -> WeightsSpec:
    return WeightsSpec(file_name=file_name, url=TORCH_HUB_URL + file_name)


def _hugging_face(hub_id: str) -> WeightsSpec:
    return WeightsSpec(file_name="model.safetensors", hf_hub_id=hub_id,
                       url=f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors")


VISUAL_MODELS: dict[str, VisualSpec] = {
    "resnet50": VisualSpec("torchvision", "resnet50", 2048, _torch_hub("resnet50-0676ba61.pth")),
    "resnet152": VisualSpec("torchvision", "resnet152", 2048, _torch_hub("resnet152-394f9c45.pth")),
    "vit_b16": VisualSpec("timm", "vit_base_patch16_224.augreg2_in21k_ft_in1k", 768,
                          _hugging_face("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")),
    "vit_s16": VisualSpec("timm", "vit_small_patch16_224.augreg_in21k_ft_in1k", 384,
                          _hugging_face("timm/vit_small_patch16_224.augreg_in21k_ft_in1k")),
}
VISUAL_MODEL_NAMES = tuple(VISUAL_MODELS)  # the frame extractors, as command-line and form choices

VGGISH_WEIGHTS = WeightsSpec(vp.VGGISH_WEIGHTS_FILE, vp.VGGISH_WEIGHTS_URL)
VGGISH_PCA_WEIGHTS = WeightsSpec(vp.PCA_PARAMS_FILE, vp.PCA_PARAMS_URL)
WEIGHT_FILES: dict[str, WeightsSpec] = {  # every published file, by its fetch name
    "vggish": VGGISH_WEIGHTS, "vggish-pca": VGGISH_PCA_WEIGHTS,
    **{name: spec.weights for name, spec in VISUAL_MODELS.items()},
}
