"""Linear CCA, its torch map and the differentiable canonical correlations, against the Björck–Golub QR
computation, a textbook dense ridge CCA and scikit-learn's iterative CCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import CCA

from hscmae.cca import CanonicalMap, LinearCCA, canonical_correlations, fit_cca, fit_cca_path, fit_cca_tensors


def paired(seed: int, n: int = 600, dx: int = 8, dy: int = 6, shared: int = 3):
    """Two views sharing ``shared`` latent factors through different random mixings, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    x = z @ rng.normal(size=(shared, dx)) + rng.normal(size=(n, dx)) + 5.0
    y = z @ rng.normal(size=(shared, dy)) + 2.0 * rng.normal(size=(n, dy)) - 3.0
    return x, y


def bjorck_golub(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations: singular values of ``Qx' Qy`` from QR of the centred data."""
    qx, _ = np.linalg.qr(x - x.mean(axis=0))
    qy, _ = np.linalg.qr(y - y.mean(axis=0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_correlations_equal_bjorck_golub(seed):
    x, y = paired(seed)
    cca = fit_cca(x, y, k=6, ridge=0.0)
    np.testing.assert_allclose(cca.correlations, bjorck_golub(x, y), atol=1e-10)


def test_variates_are_whitened_and_paired_by_correlation():
    x, y = paired(2)
    cca = fit_cca(x, y, k=4, ridge=0.0)
    u, v = cca.transform_x(x), cca.transform_y(y)
    np.testing.assert_allclose(np.cov(u, rowvar=False), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(np.cov(v, rowvar=False), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(np.cov(u.T, v.T)[:4, 4:], np.diag(cca.correlations), atol=1e-9)


def test_first_component_matches_sklearn():
    x, y = paired(3)
    ours = fit_cca(x, y, k=1, ridge=0.0)
    u_sk, v_sk = CCA(n_components=1, max_iter=5000, tol=1e-12).fit(x, y).transform(x, y)
    sk_corr = np.corrcoef(u_sk[:, 0], v_sk[:, 0])[0, 1]
    assert ours.correlations[0] == pytest.approx(sk_corr, abs=1e-6)
    # same direction up to sign
    assert abs(np.corrcoef(ours.transform_x(x)[:, 0], u_sk[:, 0])[0, 1]) == pytest.approx(1.0, abs=1e-6)


def test_ridge_shrinks_correlations_and_handles_wide_data():
    x, y = paired(4)
    assert np.all(fit_cca(x, y, k=3, ridge=0.1).correlations < fit_cca(x, y, k=3, ridge=0.0).correlations)
    rng = np.random.default_rng(4)
    wide_x, wide_y = rng.normal(size=(50, 80)), rng.normal(size=(50, 70))
    with pytest.raises(ValueError, match="singular"):
        fit_cca(wide_x, wide_y, k=5, ridge=0.0)
    wide = fit_cca(wide_x, wide_y, k=5, ridge=1e-2)
    assert np.all(wide.correlations < 1.0) and np.all(np.diff(wide.correlations) <= 1e-12)


def test_transform_applies_training_statistics_to_new_data():
    x, y = paired(5)
    cca = fit_cca(x[:400], y[:400], k=2, ridge=0.0)
    np.testing.assert_allclose(cca.transform_x(x[400:]), (x[400:] - x[:400].mean(axis=0)) @ cca.proj_x)
    # the shared factors carry over: held-out variates stay strongly correlated
    u, v = cca.transform_x(x[400:]), cca.transform_y(y[400:])
    assert np.corrcoef(u[:, 0], v[:, 0])[0, 1] > 0.8 * cca.correlations[0]


def test_torch_input_save_and_load(tmp_path):
    x, y = paired(6)
    cca = fit_cca(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), k=3)
    path = tmp_path / "cca.safetensors"
    cca.save(str(path))
    loaded = LinearCCA.load(str(path))
    np.testing.assert_array_equal(loaded.transform_y(y), cca.transform_y(y))
    np.testing.assert_allclose(cca.correlations, fit_cca(x, y, k=3).correlations, atol=1e-5)


def test_bad_arguments():
    x, y = paired(7)
    with pytest.raises(ValueError, match="k=7"):
        fit_cca(x, y, k=7)
    with pytest.raises(ValueError, match="same number of rows"):
        fit_cca(x, y[:-1], k=2)


def dense_ridge_correlations(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Textbook ridge CCA with full D x D matrices: singular values of ``Cxx^-1/2 Cxy Cyy^-1/2``."""
    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        reg = c + ridge * np.trace(c) / len(c) * np.eye(len(c))
        values, vectors = np.linalg.eigh(reg)
        return (vectors / np.sqrt(values)) @ vectors.T

    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    n = len(x) - 1
    return np.linalg.svd(inv_sqrt(xc.T @ xc / n) @ (xc.T @ yc / n) @ inv_sqrt(yc.T @ yc / n), compute_uv=False)


@pytest.mark.parametrize("rows", [40, 300])  # wider than tall, and taller than wide
def test_ridge_path_equals_textbook_dense_ridge_cca(rows):
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(rows, 60)), rng.normal(size=(rows, 50))
    y[:, :5] += x[:, :5]
    ridges = [1e-2, 1e-1, 1.0]
    for ridge, cca in zip(ridges, fit_cca_path(x, y, k=10, ridges=ridges)):
        np.testing.assert_allclose(cca.correlations, dense_ridge_correlations(x, y, ridge)[:10], atol=1e-9)
        u, v = cca.transform_x(x), cca.transform_y(y)
        # covariance of each variate pair is a' Cxy b = p' T q, the singular value
        assert np.all(np.sum(u * v, axis=0) / (rows - 1) == pytest.approx(cca.correlations, rel=1e-9))


def test_collinear_columns_give_zero_directions_not_a_narrower_fit():
    """x spans 3 of its 5 columns: the fit stays k=5 wide, the first 3 correlations are those of the
    3 independent columns (computed separately), the other 2 are 0 with zero projections."""
    rng = np.random.default_rng(3)
    base, y = rng.normal(size=(200, 3)), rng.normal(size=(200, 5))
    y[:, :3] += base
    x = np.column_stack([base, base[:, 0], base[:, 1] + base[:, 2]])
    wide = fit_cca(x, y, k=5, ridge=1e-9)
    narrow = fit_cca(base, y, k=3, ridge=1e-9)
    assert wide.proj_x.shape == (5, 5) and wide.proj_y.shape == (5, 5)
    np.testing.assert_allclose(wide.correlations[:3], narrow.correlations, atol=1e-6)
    np.testing.assert_array_equal(wide.correlations[3:], 0.0)
    np.testing.assert_array_equal(wide.proj_x[:, 3:], 0.0)


def test_fewer_rows_than_k_give_zero_directions_past_the_rank():
    """4 centred rows span 3 dimensions: a k=6 fit has the 3 directions of a k=3 fit, then zeros."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4, 8)), rng.normal(size=(4, 6))
    wide, narrow = fit_cca(x, y, k=6, ridge=1e-2), fit_cca(x, y, k=3, ridge=1e-2)
    assert wide.proj_x.shape == (8, 6) and wide.proj_y.shape == (6, 6)
    np.testing.assert_allclose(wide.correlations[:3], narrow.correlations, atol=1e-12)
    np.testing.assert_array_equal(wide.correlations[3:], 0.0)
    np.testing.assert_array_equal(wide.proj_y[:, 3:], 0.0)
    u, v = wide.embed(x, y)
    np.testing.assert_allclose(np.abs(u[:, :3]), np.abs(narrow.embed(x, y)[0]), atol=1e-10)


def test_canonical_correlations_match_qr_reference():
    x, y = paired(10, n=400)
    got = canonical_correlations(torch.tensor(x), torch.tensor(y), ridge=1e-12).numpy()
    np.testing.assert_allclose(got, bjorck_golub(x, y), atol=1e-8)
    assert got[0] > 0.5  # the data are correlated: the check is not trivially about zeros


def test_canonical_correlations_with_ridge_match_dense_ridge_cca_and_the_fit():
    x, y = paired(11, n=50)
    got = canonical_correlations(torch.tensor(x, dtype=torch.float32), torch.tensor(y), ridge=0.3)
    np.testing.assert_allclose(got.numpy(), dense_ridge_correlations(x, y, 0.3), rtol=1e-5)
    np.testing.assert_allclose(got.numpy(), fit_cca(x, y, k=6, ridge=0.3).correlations, rtol=1e-5)  # one ridge rule
    assert got.dtype == torch.float64


def test_canonical_map_is_the_fit_with_variates_scaled_by_their_correlations():
    x, y = paired(12)
    cca = fit_cca(x, y, k=3, ridge=0.1)
    cmap = CanonicalMap.from_cca(fit_cca_tensors(x, y, k=3, ridges=[0.1])[0], dtype=torch.float64)
    got = cmap({"audio": torch.tensor(x), "visual": torch.tensor(y)})
    audio, visual = cca.embed(x, y)
    np.testing.assert_allclose(got["audio"].numpy(), audio, atol=1e-10)
    np.testing.assert_allclose(got["visual"].numpy(), visual, atol=1e-10)


def test_heldout_correlations_are_each_variate_pairs_correlation():
    x, y = paired(13, n=900)
    cca = fit_cca(x[:600], y[:600], k=3, ridge=0.0)
    u, v = cca.transform_x(x[600:]), cca.transform_y(y[600:])
    np.testing.assert_allclose(cca.heldout_correlations(x[600:], y[600:]),
                               [np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(3)], atol=1e-12)
    # on the training data themselves (no ridge) they are the canonical correlations
    np.testing.assert_allclose(cca.heldout_correlations(x[:600], y[:600]), cca.correlations, atol=1e-10)
