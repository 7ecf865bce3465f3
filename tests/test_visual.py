"""Frame extractors: preprocessing against PIL/numpy, features against each model's own penultimate output."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import timm.data
import torch
import torchvision
from PIL import Image

from extractors.registry import VISUAL_MODELS, WeightsSpec
from extractors.visual import VisualExtractor, build_visual, preprocess_frames
from extractors.weights import WeightsNotFoundError
from pipeline.vocab import RANDOM_WEIGHTS


@functools.cache
def random_model(name: str) -> VisualExtractor:
    """Each model built once per session (random weights)."""
    return build_visual(name, weights=RANDOM_WEIGHTS)


def make_image(height: int = 90, width: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth pattern plus noise, ``[H, W, 3]`` uint8 (not square, so resize and crop both matter)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    img = np.stack([128 + 100 * np.sin(xx / (9 + 4 * c)) * np.cos(yy / 7) for c in range(3)], -1)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def pil_reference(image: np.ndarray, resize: int, crop: int, interpolation: str, mean, std) -> np.ndarray:
    """Shorter side to ``resize`` with PIL, centre crop and normalise with numpy: ``[3, crop, crop]``."""
    h, w = image.shape[:2]
    size = (int(resize * w / h), resize) if h <= w else (resize, int(resize * h / w))
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    resized = np.asarray(Image.fromarray(image).resize(size, resample), dtype=np.float64) / 255.0
    top, left = int(round((size[1] - crop) / 2)), int(round((size[0] - crop) / 2))
    cropped = resized[top:top + crop, left:left + crop]
    return ((cropped - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet50", (256, 224, "bilinear", (0.485, 0.456, 0.406))),
    ("vit_s16", (248, 224, "bicubic", (0.5, 0.5, 0.5))),  # timm: floor(224 / crop_pct 0.9)
])
def test_preprocessing_matches_pil(name: str, expected: tuple) -> None:
    p = random_model(name).preprocess
    assert (p.resize, p.crop, p.interpolation, p.mean) == expected
    image = make_image()
    ours = preprocess_frames(torch.from_numpy(image)[None], p)[0].numpy()
    ref = pil_reference(image, p.resize, p.crop, p.interpolation, p.mean, p.std)
    assert ours.shape == ref.shape == (3, 224, 224)
    # torch's antialiased uint8 resize and PIL's differ by at most 2 grey levels, rarely.
    diff = np.abs(ours - ref) * np.array(p.std)[:, None, None] * 255
    assert diff.max() <= 2.01
    assert diff.mean() < 0.05


def test_timm_preprocessing_matches_timm_transform() -> None:
    extractor = random_model("vit_s16")
    image = make_image(120, 100, seed=3)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=extractor.backbone))
    ref = transform(Image.fromarray(image)).numpy()
    ours = preprocess_frames(torch.from_numpy(image)[None], extractor.preprocess)[0].numpy()
    assert np.abs(ours - ref).max() <= 2.01 / 255 / 0.5


def torchvision_pooled(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ResNet written out stage by stage up to the global average pool: ``[N, 2048]``."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        h = stage(h)
    return h.mean(dim=(2, 3))


@pytest.mark.parametrize("name", sorted(VISUAL_MODELS))
def test_feature_is_the_models_penultimate_output(name: str) -> None:
    extractor = random_model(name)
    torchvision_model = VISUAL_MODELS[name].library == "torchvision"
    # One image; ResNets take any size, so a small one keeps the test fast.
    side = 96 if torchvision_model else 224
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ours = extractor.backbone(x)
        ref = torchvision_pooled(extractor.backbone, x) if torchvision_model else extractor.backbone.forward_features(x)[:, 0]
    assert ours.shape == (1, VISUAL_MODELS[name].dim) == (1, extractor.dim)
    assert ours.std() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_extractor_embeds_uint8_frames_one_per_frame() -> None:
    extractor = random_model("resnet50")
    frames = torch.from_numpy(np.stack([make_image(seed=4), make_image(seed=5)]))
    with torch.inference_mode():
        ours = extractor(frames)
        ref = torchvision_pooled(extractor.backbone, preprocess_frames(frames, extractor.preprocess))
    assert ours.shape == (2, 2048)
    assert (ours[0] - ours[1]).abs().max() > 1e-4  # different frames, different features
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_loads_published_state_dicts_and_records_sha256(tmp_path: Path) -> None:
    torch.manual_seed(7)
    resnet = torchvision.models.resnet50()
    pth = tmp_path / "resnet50-0676ba61.pth"
    torch.save(resnet.state_dict(), pth)
    loaded = build_visual("resnet50", weights=pth)
    assert loaded.meta()["weights"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    torch.testing.assert_close(loaded.backbone.layer4[2].conv3.weight, resnet.layer4[2].conv3.weight)

    vit = timm.create_model(VISUAL_MODELS["vit_s16"].arch, pretrained=False)
    st = tmp_path / "model.safetensors"
    safetensors.torch.save_file(vit.state_dict(), str(st))
    loaded_vit = build_visual("vit_s16", weights=st)
    assert loaded_vit.meta()["weights"] == hashlib.sha256(st.read_bytes()).hexdigest()
    torch.testing.assert_close(loaded_vit.backbone.blocks[-1].mlp.fc2.weight, vit.blocks[-1].mlp.fc2.weight)


def test_missing_weights_say_which_file_where_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as missing:
        build_visual("resnet152")
    message = str(missing.value)
    assert "resnet152-394f9c45.pth" in message and str(tmp_path / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet152-394f9c45.pth" in message
    assert "`python -m extractors.weights fetch resnet152`" in message  # the registry names it
    assert random_model("resnet50").meta()["weights"] == RANDOM_WEIGHTS
    with pytest.raises(ValueError, match="unknown visual model"):
        build_visual("resnet18", weights=RANDOM_WEIGHTS)


@pytest.mark.parametrize("name", sorted(VISUAL_MODELS))
def test_registry_names_each_models_own_published_file(name: str) -> None:
    """The torch-free registry's weight files are those torchvision (IMAGENET1K_V1) and timm publish."""
    spec = VISUAL_MODELS[name]
    if spec.library == "torchvision":
        url = torchvision.models.get_model_weights(spec.arch).IMAGENET1K_V1.url
        assert spec.weights == WeightsSpec(file_name=url.rsplit("/", 1)[-1], url=url)
    else:
        hub_id = timm.models.get_pretrained_cfg(spec.arch).hf_hub_id
        assert spec.weights == WeightsSpec(file_name="model.safetensors", hf_hub_id=hub_id,
                                           url=f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors")
