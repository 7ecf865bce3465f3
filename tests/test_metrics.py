"""Retrieval metrics against scikit-learn and hand computation, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as sk_pr_curve
from sklearn.metrics.pairwise import cosine_similarity

from hscmae.metrics import (
    average_precision_from_scores,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    retrieval_metrics,
)


def sklearn_map(scores: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> float:
    """The per-query scikit-learn loop, the reference for every mAP here."""
    return float(np.mean([average_precision_score(g_labels == q_labels[i], scores[i]) for i in range(len(scores))]))


def random_case(seed: int, nq: int = 120, ng: int = 150, dim: int = 16, classes: int = 6):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(nq, dim)), rng.normal(size=(ng, dim)),
            rng.integers(0, classes, nq), rng.integers(0, classes, ng))


def codebook_case(seed: int, nq: int = 200, ng: int = 260, words: int = 7, classes: int = 4):
    """Quantised embeddings: every vector is one of ``words`` codewords, so scores tie heavily.

    The reference scores come from the codeword cosine table, so its ties are exact by construction.
    """
    rng = np.random.default_rng(seed)
    book = rng.normal(size=(words, 12))
    cq, cg = rng.integers(0, words, nq), rng.integers(0, words, ng)
    table = cosine_similarity(book)
    return book[cq], book[cg], rng.integers(0, classes, nq), rng.integers(0, classes, ng), table[cq][:, cg]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_sklearn_on_random_embeddings(seed):
    q, g, ql, gl = random_case(seed)
    assert mean_average_precision(q, g, ql, gl) == pytest.approx(sklearn_map(cosine_similarity(q, g), ql, gl), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_sklearn_with_heavy_ties(seed):
    q, g, ql, gl, scores = codebook_case(seed)
    assert len(np.unique(scores[0])) <= 7  # 260 gallery items share at most 7 scores per query
    assert mean_average_precision(q, g, ql, gl) == pytest.approx(sklearn_map(scores, ql, gl), abs=1e-6)


def test_ties_differ_from_tie_breaking():
    """Sharing the end-of-group precision is not the same as any fixed order inside a tie."""
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    relevant = np.array([[True, False, False, True]])
    # tie group of 3 holds 1 relevant: precision 1/3 at its end; last item: 2/4
    expected = (1 / 3 + 2 / 4) / 2
    assert average_precision_from_scores(scores, relevant)[0] == pytest.approx(expected)
    assert average_precision_score(relevant[0], scores[0]) == pytest.approx(expected)


def test_ties_in_some_rows_only_equal_sklearn():
    """Rows where a clip and its mirror image tie (relevant with relevant, or with irrelevant) beside untied rows."""
    rng = np.random.default_rng(14)
    g = rng.normal(size=(150, 6))
    g[75:] = g[:75] * [1, 1, 1, 1, 1, -1]  # mirror images in the last coordinate
    q = rng.normal(size=(100, 6))
    q[:50, 5] = 0  # these queries score each clip and its mirror image the same
    ql, gl = rng.integers(0, 3, 100), rng.integers(0, 3, 150)
    scores = cosine_similarity(q, g)
    assert (scores[:50, :75] == scores[:50, 75:]).all() and (scores[50:, :75] != scores[50:, 75:]).all()
    ours = retrieval_metrics(q, g, ql, gl, ks=(), recall_levels=()).average_precision
    reference = [average_precision_score(gl == ql[i], scores[i]) for i in range(len(q))]
    np.testing.assert_allclose(ours, reference, atol=1e-9)


def test_score_level_ap_equals_sklearn_on_integer_scores():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(40, 90))
    relevant = rng.random((40, 90)) < 0.25
    relevant[:, 0] = True
    ours = average_precision_from_scores(scores, relevant)
    reference = [average_precision_score(relevant[i], scores[i]) for i in range(40)]
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_torch_inputs_give_the_numpy_result():
    q, g, ql, gl = random_case(4)
    as_numpy = mean_average_precision(q, g, ql, gl)
    as_torch = mean_average_precision(torch.tensor(q, dtype=torch.float32), torch.tensor(g, dtype=torch.float32),
                                      torch.tensor(ql), torch.tensor(gl))
    assert as_torch == pytest.approx(as_numpy, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunking_does_not_change_results(chunk):
    q, g, ql, gl, _ = codebook_case(5)
    whole = retrieval_metrics(q, g, ql, gl, chunk_size=None)
    chunked = retrieval_metrics(q, g, ql, gl, chunk_size=chunk)
    np.testing.assert_allclose(chunked.average_precision, whole.average_precision, atol=1e-12)
    np.testing.assert_allclose(chunked.precision, whole.precision, atol=1e-12)
    assert chunked.precision_at_k == pytest.approx(whole.precision_at_k)


def test_memory_bound_picks_small_chunks_with_same_result():
    q, g, ql, gl = random_case(6)
    tiny = retrieval_metrics(q, g, ql, gl, max_chunk_bytes=1)  # forces one query per chunk
    np.testing.assert_allclose(tiny.average_precision, retrieval_metrics(q, g, ql, gl).average_precision, atol=1e-12)


def test_precision_at_k_matches_hand_count():
    q, g, ql, gl = random_case(7)
    scores = cosine_similarity(q, g)
    order = np.argsort(-scores, axis=1, kind="stable")
    ours = precision_at_k(q, g, ql, gl, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert ours[k] == pytest.approx(np.mean(gl[order[:, :k]] == ql[:, None]))


def test_pr_curve_matches_per_query_sklearn_interpolation():
    q, g, ql, gl, scores = codebook_case(8)
    levels = np.linspace(0, 1, 11)
    recall, precision = precision_recall_curve(q, g, ql, gl, recall_levels=levels)
    expected = []
    for i in range(len(q)):
        p, r, _ = sk_pr_curve(gl == ql[i], scores[i])
        p, r = p[:-1], r[:-1]  # drop sklearn's appended (recall 0, precision 1) end point
        expected.append([p[r >= t].max() for t in levels])
    np.testing.assert_allclose(recall, levels)
    np.testing.assert_allclose(precision, np.mean(expected, axis=0), atol=1e-9)
    assert precision[-1] > 0 and np.all(np.diff(precision) <= 1e-12)


def test_area_under_pr_curve_is_close_to_map():
    q, g, ql, gl = random_case(9, nq=60, ng=400)
    result = retrieval_metrics(q, g, ql, gl, recall_levels=np.linspace(0, 1, 1001))
    area = np.trapezoid(result.precision, result.recall)
    assert area == pytest.approx(result.mean_average_precision, abs=0.02)


def test_queries_without_relevant_items_are_excluded_and_counted():
    q, g, ql, gl = random_case(10)
    ql = ql.copy()
    ql[:5] = 99  # a label absent from the gallery
    with pytest.warns(UserWarning, match="5 of 120 queries"):
        value = mean_average_precision(q, g, ql, gl)
    keep = ql != 99
    assert value == pytest.approx(sklearn_map(cosine_similarity(q[keep], g), ql[keep], gl), abs=1e-6)
    assert retrieval_metrics(q, g, ql, gl).n_without_relevant == 5


def test_bad_inputs_raise_clear_errors():
    q, g, ql, gl = random_case(11)
    with pytest.raises(ValueError, match="no query has a relevant"):
        mean_average_precision(q, g, ql + 100, gl)
    zero = q.copy()
    zero[3] = 0
    with pytest.raises(ValueError, match="queries: row 3 is all zeros"):
        mean_average_precision(zero, g, ql, gl)
    nan = g.copy()
    nan[4, 2] = np.nan
    with pytest.raises(ValueError, match="gallery: row 4 has non-finite"):
        mean_average_precision(q, nan, ql, gl)
    with pytest.raises(ValueError, match="labels must be integers"):
        mean_average_precision(q, g, ql.astype(float), gl)
    with pytest.raises(ValueError, match="every k"):
        precision_at_k(q, g, ql, gl, ks=(1, 1000))


@pytest.mark.parametrize("seed", [12, 13])
def test_precision_at_k_breaks_ties_by_gallery_order(seed):
    q, g, ql, gl, scores = codebook_case(seed)
    order = np.argsort(-scores, axis=1, kind="stable")  # ties: earlier gallery item first
    ours = precision_at_k(q, g, ql, gl, ks=(1, 5, 10, 50))
    for k in (1, 5, 10, 50):
        assert ours[k] == pytest.approx(np.mean(gl[order[:, :k]] == ql[:, None]), abs=1e-12)


def test_score_level_ap_with_padding_and_empty_rows():
    scores = np.array([[0.5, 0.5, 0.2, 0.9, 0.1], [0.3, 0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 0.5, 0.5, 0.2]])
    relevant = np.array([[True, False, False, True, True], [False, True, False, False, False], [False] * 5])
    ours = average_precision_from_scores(scores, relevant)
    for i in range(2):
        assert ours[i] == pytest.approx(average_precision_score(relevant[i], scores[i]), abs=1e-12)
    assert np.isnan(ours[2])
