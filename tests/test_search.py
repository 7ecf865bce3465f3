"""Cross-modal search: exact top-k against a brute-force numpy ranking (ties included), FAISS, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from hscmae.embeddings import Embeddings, read_embeddings, write_embeddings
from hscmae.search import SCORE_GRID, Index, faiss_available, float32_margin, main


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every cosine, rounded to the search's grid, sorted by (score desc, row asc)."""
    q, g = np.asarray(queries, dtype=np.float64), np.asarray(gallery, dtype=np.float64)
    q, g = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    scores = np.round(q @ g.T / SCORE_GRID) * SCORE_GRID
    order = np.array([np.lexsort((np.arange(len(g)), -row))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, axis=1)


def tied_index(n: int = 300, dim: int = 6, seed: int = 0) -> Index:
    """Small-integer vectors (many exactly equal cosines) plus repeated rows and scaled copies."""
    rng = np.random.default_rng(seed)
    audio = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    visual = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    audio[audio.sum(1) == 0] += 1  # no all-zero rows
    visual[np.abs(visual).sum(1) == 0, 0] = 1
    audio[np.abs(audio).sum(1) == 0, 0] = 1
    visual[n // 2:n // 2 + 20] = 3 * visual[:20]  # scaled copies: the same cosine at another row
    labels = np.array([f"class{i % 5}" for i in range(n)], dtype=object)
    return Index(clip_id=np.array([f"clip{i:04d}" for i in range(n)], dtype=object), label=labels,
                 split=np.array(["test"] * n, dtype=object), audio=audio, visual=visual)


@pytest.mark.parametrize("direction", ["a2v", "v2a"])
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_top_k_equals_brute_force_with_ties(direction, chunk_bytes):
    index = tied_index()
    query_m, gallery_m = ("audio", "visual") if direction == "a2v" else ("visual", "audio")
    queries = index.vectors(query_m)[:40]
    kwargs = {} if chunk_bytes is None else {"max_chunk_bytes": chunk_bytes}  # 200 B: one query, max(k, 16) clips
    for k in (1, 7, 25):
        found = index.search(queries, k, direction, **kwargs)
        want_index, want_score = brute_force(queries, index.vectors(gallery_m), k)
        np.testing.assert_array_equal(found.index, want_index)
        np.testing.assert_array_equal(found.score, want_score)
    # the set really has ties inside the top 25, so tie-breaking was exercised
    assert (np.diff(want_score, axis=1) == 0).any()


@pytest.mark.parametrize("chunk_bytes", [None, 6000])
def test_cosines_closer_than_float32_rounding_are_ranked_exactly(chunk_bytes):
    """Float32 scores cannot order these clips; the float64 re-scoring of the candidates must."""
    rng = np.random.default_rng(2)
    n, dim = 800, 16
    queries = rng.normal(size=(3, dim)).astype(np.float32)
    # 200 clips near each query (cosines 1 - ~1e-8: apart by more than SCORE_GRID, less than float32 rounding),
    # and 200 random clips
    near = [q + 3e-5 * np.linalg.norm(q) * rng.normal(size=(200, dim)) for q in queries]
    visual = np.concatenate([*near, rng.normal(size=(200, dim))]).astype(np.float32)[rng.permutation(n)]
    index = Index(clip_id=np.arange(n).astype(str).astype(object), label=np.full(n, None, dtype=object),
                  split=np.full(n, None, dtype=object), audio=visual.copy(), visual=visual)
    unit = visual / np.linalg.norm(visual, axis=1, keepdims=True)
    fast = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    float32_levels = [len(np.unique(row)) for row in np.sort(fast, axis=1)[:, -50:]]  # float32 ties most of each top 50
    kwargs = {} if chunk_bytes is None else {"max_chunk_bytes": chunk_bytes}  # 6000 B: one query, 500-clip chunks
    for k in (1, 10, 50):
        found = index.search(queries, k, "a2v", **kwargs)
        want_index, want_score = brute_force(queries, visual, k)
        np.testing.assert_array_equal(found.index, want_index)
        np.testing.assert_array_equal(found.score, want_score)
    float64_levels = [len(np.unique(row)) for row in want_score]  # the exact scores mostly differ
    assert all(exact > 2 * coarse for exact, coarse in zip(float64_levels, float32_levels))


@pytest.mark.parametrize("dim", [2, 32, 512])
def test_float32_margin_covers_twice_the_float32_error(dim):
    """The candidate margin against the float32 error of cosines of float64 unit vectors rounded to float32."""
    rng = np.random.default_rng(dim)
    for a, b in ((rng.normal(size=(300, dim)), rng.normal(size=(400, dim))),
                 (rng.random((300, dim)), rng.random((400, dim)))):  # all products positive: errors add up
        a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        error = np.abs(a.astype(np.float32) @ b.astype(np.float32).T - a @ b.T).max()
        assert 0 < 2 * error < float32_margin(dim)


def test_whole_gallery_and_bad_arguments():
    index = tied_index(n=50)
    found = index.search(index.audio[3], 50, "a2v")
    assert sorted(found.index[0]) == list(range(50)) and np.all(np.diff(found.score[0]) <= 0)
    with pytest.raises(ValueError, match="k must be in"):
        index.search(index.audio[:2], 51, "a2v")
    with pytest.raises(ValueError, match="direction"):
        index.search(index.audio[:2], 3, "a2a")
    with pytest.raises(ValueError, match="all zeros"):
        index.search(np.zeros(6), 3, "v2a")
    with pytest.raises(ValueError, match="dims"):
        index.search(np.ones((1, 5)), 3, "v2a")


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (optional)")
def test_faiss_gives_the_exact_results_on_untied_data():
    rng = np.random.default_rng(1)
    n, dim = 2000, 16
    index = Index(clip_id=np.arange(n).astype(str).astype(object), label=np.full(n, None, dtype=object),
                  split=np.full(n, None, dtype=object), audio=rng.normal(size=(n, dim)).astype(np.float32),
                  visual=rng.normal(size=(n, dim)).astype(np.float32))
    for direction, query in (("a2v", index.audio[:30]), ("v2a", index.visual[:30])):
        exact = index.search(query, 10, direction)
        approx = index.search(query, 10, direction, backend="faiss")
        np.testing.assert_array_equal(approx.index, exact.index)
        np.testing.assert_allclose(approx.score, exact.score, atol=1e-5)


@pytest.fixture
def emb_dir(tmp_path):
    index = tied_index(n=40)
    emb = Embeddings(clip_id=index.clip_id, label=index.label, label_id=np.arange(40) % 5, split=index.split,
                     audio=index.audio, visual=index.visual, meta={"method": "test"})
    write_embeddings(tmp_path / "emb" / "embeddings-00000.parquet", emb)
    return tmp_path / "emb", index


def test_embedding_shards_round_trip(emb_dir):
    folder, index = emb_dir
    emb = read_embeddings(folder)
    np.testing.assert_array_equal(emb.audio, index.audio)
    np.testing.assert_array_equal(emb.visual, index.visual)
    assert list(emb.clip_id) == list(index.clip_id) and emb.meta == {"method": "test"}


def test_cli_prints_the_ranking_of_a_clip(emb_dir, capsys):
    folder, index = emb_dir
    assert main(["--index", str(folder), "--query-audio", "clip0007", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    want, scores = brute_force(index.audio[7:8], index.visual, 3)
    assert lines[0] == "query clip0007 (class2), audio -> visual of 40 clips"
    for line, row, score in zip(lines[2:], want[0], scores[0]):
        assert line.split() == [str(list(want[0]).index(row) + 1), f"{score:.4f}", f"clip{row:04d}", f"class{row % 5}"]


def test_cli_queries_from_an_npy_file(emb_dir, tmp_path, capsys):
    folder, index = emb_dir
    np.save(tmp_path / "q.npy", index.visual[:2])
    assert main(["--index", str(folder), "--query-visual", str(tmp_path / "q.npy"), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("query q.npy[") == 2
    want, _ = brute_force(index.visual[:2], index.audio, 1)
    assert f"clip{want[1, 0]:04d}" in out.splitlines()[-1]


@pytest.mark.parametrize("args, message", [
    (["--query-audio", "no-such-clip"], "neither a clip id"),
    (["--query-audio", "clip0001", "--top", "0"], "--top: must be > 0"),
    (["--query-audio", "clip0001", "--split", "train"], "no clips in split 'train'"),
])
def test_cli_bad_input_is_one_error_line(emb_dir, capsys, args, message):
    folder, _ = emb_dir
    with pytest.raises(SystemExit) as stopped:
        main(["--index", str(folder), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_missing_index_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--index", str(tmp_path / "nothing"), "--query-audio", "x"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'nothing'}")


def test_cli_query_of_the_wrong_size_names_the_file(emb_dir, tmp_path, capsys):
    folder, _ = emb_dir
    np.save(tmp_path / "short.npy", np.ones(5))
    with pytest.raises(SystemExit) as stopped:
        main(["--index", str(folder), "--query-visual", str(tmp_path / "short.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and err == [f"error: {tmp_path / 'short.npy'}: queries have 5 dims, the index 6"]


def test_cli_index_with_a_zero_vector_is_one_error_line(tmp_path, capsys):
    index = tied_index(n=40)
    audio = index.audio.copy()
    audio[4] = 0
    write_embeddings(tmp_path / "embeddings-00000.parquet", Embeddings(
        clip_id=index.clip_id, label=index.label, label_id=np.zeros(40, dtype=int), split=index.split,
        audio=audio, visual=index.visual))
    with pytest.raises(SystemExit) as stopped:
        main(["--index", str(tmp_path), "--query-visual", "clip0001"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path}: audio embeddings") and "row 4 is all zeros" in err[0]
