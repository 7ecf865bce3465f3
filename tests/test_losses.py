"""HSC-MAE losses against numpy/scipy references and hand computations."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from hscmae import losses
from hscmae.cca import canonical_correlations


def _correlated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 3))
    h1 = shared @ rng.normal(size=(3, 4)) + 0.5 * rng.normal(size=(n, 4))
    h2 = shared @ rng.normal(size=(3, 3)) + 0.8 * rng.normal(size=(n, 3))
    return h1, h2


def _qr_reference(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Canonical correlations without ridge: singular values of Q1^T Q2 of the centred data."""
    q1, _ = np.linalg.qr(h1 - h1.mean(0))
    q2, _ = np.linalg.qr(h2 - h2.mean(0))
    return np.linalg.svd(q1.T @ q2, compute_uv=False)


def test_cca_loss_is_minus_mean_of_top_k_per_canonical_dimension():
    h1, h2 = _correlated(300, 2)
    ref = _qr_reference(h1, h2)
    t1, t2 = torch.tensor(h1), torch.tensor(h2)
    assert float(losses.cca_loss(t1, t2, k=2, ridge=1e-12)) == pytest.approx(-ref[:2].mean(), abs=1e-8)
    assert float(losses.cca_loss(t1, t2, k=None, ridge=1e-12)) == pytest.approx(-ref.mean(), abs=1e-8)
    # hand computation: two perfectly correlated and one independent pair of dims -> -(1 + 1 + ~0) / 3
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 3))
    y = np.column_stack([2 * x[:, 0] + 1, -x[:, 1], rng.normal(size=2000)])
    got = float(losses.cca_loss(torch.tensor(x), torch.tensor(y), k=None, ridge=1e-12))
    assert got == pytest.approx(-2 / 3, abs=0.02)


def test_cca_loss_scale_does_not_grow_with_latent_size():
    """Independent data: the mean chance correlation is comparable at 8 and 64 dims, unlike the sum."""
    rng = np.random.default_rng(8)
    small = [float(losses.cca_loss(torch.tensor(rng.normal(size=(512, d))), torch.tensor(rng.normal(size=(512, d))),
                                   k=None, ridge=1e-3)) for d in (8, 64)]
    assert -1.0 <= small[1] <= small[0] <= 0.0 and small[1] > -0.5


def test_cca_loss_gradient_matches_finite_differences():
    h1, h2 = _correlated(40, 3)
    t1 = torch.tensor(h1, requires_grad=True)
    t2 = torch.tensor(h2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: losses.cca_loss(a, b, k=2, ridge=1e-3), (t1, t2))


@pytest.mark.parametrize("case", ["fewer_rows_than_dims", "duplicated_rows", "constant_column"])
def test_cca_loss_finite_on_rank_deficient_batches(case):
    rng = np.random.default_rng(4)
    if case == "fewer_rows_than_dims":
        h1, h2 = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    elif case == "duplicated_rows":
        h1 = np.repeat(rng.normal(size=(4, 8)), 8, axis=0)
        h2 = np.repeat(rng.normal(size=(4, 8)), 8, axis=0)
    else:
        h1, h2 = rng.normal(size=(32, 8)), rng.normal(size=(32, 8))
        h1[:, 3] = 2.0
    t1 = torch.tensor(h1, dtype=torch.float32, requires_grad=True)
    t2 = torch.tensor(h2, dtype=torch.float32, requires_grad=True)
    loss = losses.cca_loss(t1, t2, k=None, ridge=1e-3)
    loss.backward()
    corr = canonical_correlations(t1.detach(), t2.detach(), ridge=1e-3)
    assert torch.isfinite(loss) and torch.isfinite(t1.grad).all() and torch.isfinite(t2.grad).all()
    assert float(t1.grad.abs().sum()) > 0
    assert float(corr.max()) <= 1.0 and float(corr.min()) >= 0.0
    if case == "fewer_rows_than_dims":  # 5 centred rows span 4 dims: at most 4 non-zero correlations
        assert float(corr[4:].max()) < 1e-6 and float(corr[0]) > 0.9


@pytest.mark.parametrize("batch, latent", [(16, 32), (40, 32), (80, 32)])
def test_forced_unit_correlations_match_independent_noise(batch, latent):
    """Independent views: exactly the predicted number of canonical correlations is 1 (16: 15, 40: 25, 80: 0)."""
    g = torch.Generator().manual_seed(batch)
    x, y = (torch.randn(batch, latent, generator=g, dtype=torch.float64) for _ in range(2))
    xc, yc = x - x.mean(0), y - y.mean(0)
    # reference: cosines of the principal angles between the two centred column spaces
    corr = torch.from_numpy(scipy.linalg.subspace_angles(xc.numpy(), yc.numpy())).cos()
    assert int((corr > 1 - 1e-9).sum()) == losses.forced_unit_correlations(batch, latent) == {16: 15, 40: 25, 80: 0}[batch]


def test_soft_targets_hand_computation():
    # Four clips; both modalities' teacher embeddings are the same unit vectors at angles 0, 10, 90, 100 deg.
    angles = np.deg2rad([0.0, 10.0, 90.0, 100.0])
    emb = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    cos = np.cos(angles[:, None] - angles[None, :])
    targets = losses.soft_targets({"audio": emb, "visual": 3.0 * emb}, topk=2, temperature=0.05, self_weight=0.5)
    expected = np.zeros((4, 4))
    for i in range(4):
        others = [j for j in range(4) if j != i]
        top = sorted(others, key=lambda j: -cos[i, j])[:2]
        w = np.exp(cos[i, top] / 0.05)
        expected[i, top] = w / w.sum()
        expected[i, i] = 0.5
    expected /= 1.5
    np.testing.assert_allclose(targets.numpy(), expected, atol=1e-6)


def test_soft_targets_k0_is_identity_and_k_capped_by_batch():
    emb = torch.randn(3, 4)
    assert torch.equal(losses.soft_targets({"a": emb}, topk=0, temperature=0.05, self_weight=1.0), torch.eye(3))
    capped = losses.soft_targets({"a": emb}, topk=10, temperature=0.05, self_weight=1.0)
    np.testing.assert_allclose(capped.sum(1).numpy(), 1.0, atol=1e-6)
    assert bool((capped > 0).all())  # all 2 other clips are neighbours


def test_infonce_with_own_pair_only_equals_plain_symmetric_infonce():
    torch.manual_seed(0)
    a, v = torch.randn(8, 5), torch.randn(8, 5)
    got = losses.multi_positive_infonce(a, v, torch.eye(8), temperature=0.1)
    logits = F.normalize(a, dim=1) @ F.normalize(v, dim=1).T / 0.1
    labels = torch.arange(8)
    plain = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert float(got) == pytest.approx(float(plain), rel=1e-6)


def test_multi_positive_infonce_hand_computation():
    rng = np.random.default_rng(5)
    a, v = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    targets = rng.random((4, 4))
    targets /= targets.sum(1, keepdims=True)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = an @ vn.T / 0.2

    def log_softmax(x):
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    expected = 0.5 * (-(targets * log_softmax(s)).sum(1).mean() - (targets * log_softmax(s.T)).sum(1).mean())
    got = losses.multi_positive_infonce(torch.tensor(a), torch.tensor(v), torch.tensor(targets), temperature=0.2)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_reconstruction_loss_on_masked_entries_and_full():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    mask = torch.tensor([[True, False], [False, True]])
    assert float(losses.reconstruction_loss(pred, target, mask)) == pytest.approx((1.0 + 9.0) / 2)
    assert float(losses.reconstruction_loss(pred, target, None)) == pytest.approx((1 + 4 + 4 + 9) / 4)


def test_distill_loss_hand_computation():
    s = {"audio": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "visual": torch.tensor([[1.0, 1.0], [1.0, 0.0]])}
    t = {"audio": torch.tensor([[0.0, 3.0], [0.0, 1.0]]), "visual": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    expected = ((1 - 0) + (1 - 1)) / 2 / 2 + ((1 - 2 ** -0.5) + (1 - 1)) / 2 / 2
    assert float(losses.distill_loss(s, t)) == pytest.approx(expected)


def test_uncertainty_weights_value_gradient_and_fixed_mode():
    weights = losses.UncertaintyWeights(names=["global", "recon"])
    with torch.no_grad():
        weights.log_vars["global"].fill_(0.5)
        weights.log_vars["recon"].fill_(-1.0)
    terms = {"global": torch.tensor(-3.0), "recon": torch.tensor(2.0)}
    total = weights(terms, offsets={"global": 4.0}, learn=True)
    expected = np.exp(-0.5) * 1.0 + 0.5 + np.exp(1.0) * 2.0 - 1.0
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L
    assert float(weights.log_vars["global"].grad) == pytest.approx(1 - np.exp(-0.5) * 1.0, rel=1e-6)
    assert float(weights.log_vars["recon"].grad) == pytest.approx(1 - np.exp(1.0) * 2.0, rel=1e-6)
    assert float(weights(terms, offsets={"global": 4.0}, learn=False)) == pytest.approx(-1.0)
    assert weights.weights()["recon"] == pytest.approx(np.e, rel=1e-6)
