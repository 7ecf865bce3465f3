"""Each HSC-MAE level does its job: teacher soft positives, adaptive weights, gradient balance, one CCA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hscmae import diagnostics, losses
from hscmae.cca import canonical_correlations, canonical_space
from hscmae.config import MODEL_PRESETS, methods
from hscmae.data import ClipArrays
from hscmae.model import HSCMAE, teacher_space
from hscmae.train import fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _planted(n: int, seed: int, *, seconds: int = 2) -> ClipArrays:
    """Class signal shared by both modalities in 4 weak directions; each modality also carries a
    strong 6-d nuisance, independent of the class and of the other modality."""
    rng = np.random.default_rng(seed)
    maps = np.random.default_rng(1000)
    classes = 4
    label = rng.integers(0, classes, n)
    signature = maps.normal(size=(classes, 4))
    out = {}
    for m, dim in (("audio", 24), ("visual", 40)):
        shared = signature[label] @ maps.normal(size=(4, dim)) * 0.5
        nuisance = rng.normal(size=(n, 6)) @ maps.normal(size=(6, dim)) * 3.5
        out[m] = (shared + nuisance)[:, None, :] + 0.3 * rng.normal(size=(n, seconds, dim))
    valid = np.ones((n, seconds), dtype=bool)
    return ClipArrays(audio=out["audio"].astype(np.float32), visual=out["visual"].astype(np.float32),
                      audio_valid=valid, visual_valid=valid.copy(), label_id=label)


def test_teacher_canonical_positives_are_purer_than_raw_input_neighbours():
    clips = _planted(512, 0)
    torch.manual_seed(0)
    model = HSCMAE(in_dims=clips.dims, config=MODEL_PRESETS["demo"]).eval()
    model.set_input_stats(dict(zip(("audio", "visual"), clips.pooled())))
    raw = {m: torch.from_numpy(x) for m, x in zip(("audio", "visual"), clips.pooled())}
    labels = torch.from_numpy(clips.label_id)
    with torch.no_grad():
        clean = model.standardize(raw)
        canonical, _ = teacher_space(model.encoders, clean, ridge=1e-3)
    targets = {name: losses.soft_targets(z, topk=5, temperature=0.05, self_weight=0.0)
               for name, z in (("raw", clean), ("teacher", canonical))}
    purity = {name: diagnostics.positive_purity(t, labels) for name, t in targets.items()}
    # 4 balanced classes: chance is ~0.25; raw neighbours follow the nuisance clusters
    assert purity["raw"] < 0.4 and purity["teacher"] > 0.6, purity


def _default(name: str) -> object:
    """The method's default config (demo preset, default budget: 40 epochs, batch 512) on CPU."""
    method = methods()[name]
    return dataclasses.replace(method, model=MODEL_PRESETS["demo"],
                               train=dataclasses.replace(method.train, device="cpu"))


def _score(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> float:
    return float(((audio / np.linalg.norm(audio, axis=1, keepdims=True))
                  * (visual / np.linalg.norm(visual, axis=1, keepdims=True))).sum(1).mean())


@pytest.fixture(scope="module")
def trained():
    """hscmae with learned and with fixed weights, default budget, two steps per epoch (80 steps)."""
    train, val = _planted(1024, 1), _planted(64, 2)
    return {name: fit(_default(name), train, val, seed=0, scorer=_score, progress=False)
            for name in ("hscmae", "hscmae-fixed-weights")}


def test_learned_weights_move_and_change_training_within_the_default_budget(trained):
    learned, fixed = trained["hscmae"].history, trained["hscmae-fixed-weights"].history
    assert len(learned) == methods()["hscmae"].train.epochs
    last = learned[-1]["weights"]
    # the InfoNCE term (~log batch size) and the deep-CCA term (in [0, 1] after its offset) are far
    # apart in size; their learned weights must have moved apart by more than a factor of 3
    assert last["global"] / last["local"] > 3.0, last
    assert all(w == 1.0 for w in fixed[-1]["weights"].values())
    # and that changes what drives the encoders: the global term's gradient share differs clearly
    share_learned = np.mean([h["grad_share"]["global"] for h in learned[-10:]])
    share_fixed = np.mean([h["grad_share"]["global"] for h in fixed[-10:]])
    assert share_learned > share_fixed + 0.05, (share_learned, share_fixed)


def test_gradient_shares_at_initialisation_stay_in_band(trained):
    """Band at the first step: deep CCA neither dead nor dominant (0.01-0.5), InfoNCE at most 0.98,
    reconstruction alive (>= 0.001); the summed deep-CCA loss of before gave the global term > 0.5."""
    share = trained["hscmae"].history[0]["grad_share"]
    assert sum(share.values()) == pytest.approx(1.0)
    assert 0.01 <= share["global"] <= 0.5 and share["local"] <= 0.98 and share["recon"] >= 0.001, share


def test_gradient_shares_match_separate_backward_passes():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    terms = {"a": layer(x).sum(), "b": (layer(x) ** 2).mean()}
    norms = {}
    for name in terms:
        layer.zero_grad()
        {"a": lambda: layer(x).sum(), "b": lambda: (layer(x) ** 2).mean()}[name]().backward()
        norms[name] = float(torch.sqrt(layer.weight.grad.pow(2).sum() + layer.bias.grad.pow(2).sum()))
    got = diagnostics.gradient_shares(terms, list(layer.parameters()))
    assert got["a"] == pytest.approx(norms["a"] / (norms["a"] + norms["b"]), rel=1e-6)


def test_positive_purity_hand_computation():
    targets = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.0, 0.9], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # off-diagonal weight: 0.3 + 0.2 + 0.1 + 0.9 + 0 + 1.0 = 2.5; same class: 0.3 (0->1) + 0.1 (1->0)
    assert diagnostics.positive_purity(targets, labels) == pytest.approx(0.4 / 2.5)


def test_teacher_canonical_variates_are_paired_by_the_deep_cca_correlations():
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(400, 3))
    latent = {"audio": torch.tensor(shared @ rng.normal(size=(3, 6)) + 0.5 * rng.normal(size=(400, 6))),
              "visual": torch.tensor(shared @ rng.normal(size=(3, 5)) + 0.5 * rng.normal(size=(400, 5)))}
    variates, cmap = canonical_space(latent, ridge=1e-9)
    a, v = variates["audio"].numpy(), variates["visual"].numpy()
    corr = canonical_correlations(latent["audio"], latent["visual"], ridge=1e-9).numpy()
    # each variate is scaled by its correlation: var(a_k) = corr_k^2, cov(a_k, v_k) = corr_k^3
    np.testing.assert_allclose(np.cov(a.T), np.diag(corr ** 2), atol=1e-6)
    np.testing.assert_allclose(np.diag(np.cov(a.T, v.T)[:5, 5:]), corr ** 3, atol=1e-6)
    assert torch.allclose(cmap(latent)["visual"], variates["visual"])
