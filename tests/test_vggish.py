"""VGGish: the published state-dict layout, the forward pass, the post-processor and weight resolution."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from extractors import vggish_params as vp
from extractors.vggish import Postprocessor, VGGish, build_audio
from extractors.weights import WeightsNotFoundError, load_state_dict_file

# Key names and shapes of the PyTorch port's vggish-10086976.pth, written out as published.
PUBLISHED_VGGISH = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def published_state() -> dict[str, torch.Tensor]:
    """A state dict with the published names and shapes, He-scaled random values."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in PUBLISHED_VGGISH.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        state[name] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.01 * torch.randn(shape, generator=gen)
    return state


@pytest.fixture(scope="module")
def published_file(published_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / vp.VGGISH_WEIGHTS_FILE
    torch.save(published_state, path)
    return path


def hand_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """VGGish written out with functional ops: ``x: [N, 96, 64]`` -> ``[N, 128]``."""
    h = x[:, None]
    # The TF graph has 2x2 max-pools after conv1, conv2, conv3_2 and conv4_2.
    layers = ("features.0", "POOL", "features.3", "POOL", "features.6", "features.8", "POOL",
              "features.11", "features.13", "POOL")
    for name in layers:
        h = F.max_pool2d(h, 2) if name == "POOL" else F.relu(F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=1))
    h = h.permute(0, 2, 3, 1).reshape(len(x), -1)  # TF flattens [N, 6, 4, 512]
    for i in (0, 2, 4):
        h = F.relu(F.linear(h, state[f"embeddings.{i}.weight"], state[f"embeddings.{i}.bias"]))
    return h


def test_published_layout_loads_strictly(published_state: dict[str, torch.Tensor]) -> None:
    model = VGGish()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == PUBLISHED_VGGISH
    model.load_state_dict(published_state, strict=True)


def test_forward_matches_functional_computation(published_state: dict[str, torch.Tensor]) -> None:
    model = VGGish()
    model.load_state_dict(published_state, strict=True)
    x = torch.randn(3, vp.NUM_FRAMES, vp.NUM_BANDS, generator=torch.Generator().manual_seed(1)) - 2.0
    with torch.inference_mode():
        ours, ref = model(x), hand_forward(published_state, x)
    assert ours.shape == (3, 128)
    assert (ref > 0).float().mean() > 0.1  # a real test: many units active
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # Without the final ReLU the 128-d layer is linear (the later TensorFlow revision).
    linear = VGGish(embedding_relu=False)
    linear.load_state_dict(published_state, strict=True)
    with torch.inference_mode():
        raw = linear(x)
    assert (raw < 0).any()
    torch.testing.assert_close(raw.clamp(min=0), ours, rtol=1e-4, atol=1e-5)


def numpy_postprocess(e: np.ndarray, vectors: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The published formula: PCA, clip to [-2, 2], scale to [0, 255] and round."""
    pca = (vectors @ (e.T - means.reshape(-1, 1))).T
    clipped = np.clip(pca, -2.0, 2.0)
    return np.round((clipped + 2.0) * (255.0 / 4.0))


@pytest.mark.parametrize("means_shape", [(128,), (128, 1)])
def test_postprocessor_matches_numpy_formula(means_shape: tuple[int, ...], tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = np.linalg.qr(rng.standard_normal((128, 128)))[0] * 0.8
    means = rng.uniform(0, 1, size=means_shape)
    # The port's PCA file: these two keys; saved as numpy arrays, loaded with weights_only=True.
    path = tmp_path / vp.PCA_PARAMS_FILE
    torch.save({vp.PCA_EIGEN_VECTORS_NAME: vectors, vp.PCA_MEANS_NAME: means}, path)
    post = Postprocessor()
    post.load_state_dict(load_state_dict_file(path), strict=True)
    e = rng.uniform(0, 2, size=(50, 128)) * 2
    ours = post(torch.tensor(e, dtype=torch.float32)).numpy()
    ref = numpy_postprocess(e, vectors, means)
    assert ref.min() == 0 and ref.max() == 255  # both clip ends are exercised
    # float32 against float64 may round a value sitting on .5 the other way.
    assert np.abs(ours - ref).max() <= 1
    assert (ours == ref).mean() > 0.999


def test_build_audio_from_file_records_sha256(published_file: Path, published_state: dict[str, torch.Tensor]) -> None:
    audio = build_audio(weights=published_file)
    assert audio.meta()["weights"] == hashlib.sha256(published_file.read_bytes()).hexdigest()
    torch.testing.assert_close(audio.vggish.state_dict()["embeddings.4.weight"], published_state["embeddings.4.weight"])


def test_safetensors_and_hub_cache(published_state: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = tmp_path / "vggish.safetensors"
    safetensors.torch.save_file(published_state, str(st))
    assert build_audio(weights=st).meta()["weights"] == hashlib.sha256(st.read_bytes()).hexdigest()
    # No path: the torch hub cache, under the published file name.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as missing:
        build_audio()
    message = str(missing.value)
    assert vp.VGGISH_WEIGHTS_FILE in message and str(tmp_path / "hub" / "checkpoints") in message
    assert vp.VGGISH_WEIGHTS_URL in message
    cached = tmp_path / "hub" / "checkpoints" / vp.VGGISH_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    torch.save(published_state, cached)
    assert build_audio().meta()["weights"] == hashlib.sha256(cached.read_bytes()).hexdigest()


def test_random_only_by_name_and_said_in_meta(tmp_path: Path) -> None:
    audio = build_audio(weights="random", postprocess=True)
    assert audio.meta()["weights"] == "random" and audio.meta()["params"]["pca_weights"] == "random"
    again = build_audio(weights="random")
    torch.testing.assert_close(audio.vggish.state_dict(), again.vggish.state_dict())  # seeded
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_audio(weights=tmp_path / "nope.pth")
