"""Cross-modal search against 100,000 clips: latency of one query, a batch of queries, and peak memory.

Exact chunked cosine (``hscmae.search.Index``) and, when ``faiss-cpu`` is installed, a FAISS flat
inner-product index beside it, on the same random embeddings (no ties, so both must agree on the top
10). Memory: the peak of Python-tracked allocations (NumPy's included) during the searches, above
the index itself; and the process's peak resident size. Prints figures, asserts nothing.
Run: ``.venv/bin/python bench/bench_search.py [--clips 100000 --dim 32]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from hscmae.embeddings import Embeddings, write_embeddings
from hscmae.search import Index, faiss_available

K = 10
REPEATS = 20
BATCH = 1000


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` (after one warm-up), and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_bytes(fn) -> int:
    """Peak bytes allocated (tracemalloc) while ``fn`` runs."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=32, help="embedding size (HSC-MAE's default latent: 32)")
    args = parser.parse_args()
    if faiss_available():
        import faiss  # noqa: F401  (imported now so its libraries count in the import figure)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    rng = np.random.default_rng(0)
    n = args.clips
    emb = Embeddings(clip_id=np.array([f"clip{i:06d}" for i in range(n)], dtype=object),
                     label=np.array([f"c{i % 28}" for i in range(n)], dtype=object), label_id=np.arange(n) % 28,
                     split=np.full(n, "test", dtype=object), audio=rng.normal(size=(n, args.dim)).astype(np.float32),
                     visual=rng.normal(size=(n, args.dim)).astype(np.float32), meta={"bench": True})
    with tempfile.TemporaryDirectory() as tmp:
        write_embeddings(Path(tmp) / "embeddings-00000.parquet", emb)
        start = time.perf_counter()
        index = Index.load(tmp)
        t_load = time.perf_counter() - start
    index_mb = (index.audio.nbytes + index.visual.nbytes) / 2**20
    one, batch = index.audio[:1], index.audio[:BATCH]
    print(f"{n} clips, {args.dim}-d embeddings (index vectors {index_mb:.1f} MiB); top {K}; "
          f"Index.load from Parquet {t_load:.2f} s")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"{'backend':<8} {'1 query (median)':>17} {f'{BATCH} queries':>13} {'peak extra memory':>18}")
    t_one, exact_one = timed(lambda: index.search(one, K, "a2v"), REPEATS)
    t_batch, exact_batch = timed(lambda: index.search(batch, K, "a2v"), 3)
    peak_one = peak_bytes(lambda: index.search(one, K, "a2v"))
    peak_batch = peak_bytes(lambda: index.search(batch, K, "a2v"))
    print(f"{'exact':<8} {t_one * 1e3:14.2f} ms {t_batch:11.3f} s {peak_one / 2**20:8.1f} / {peak_batch / 2**20:.1f} MiB")
    if faiss_available():
        start = time.perf_counter()
        index.search(one, K, "a2v", backend="faiss")  # builds the FAISS index once
        t_build = time.perf_counter() - start
        t_fone, faiss_one = timed(lambda: index.search(one, K, "a2v", backend="faiss"), REPEATS)
        t_fbatch, faiss_batch = timed(lambda: index.search(batch, K, "a2v", backend="faiss"), 3)
        f_peak_one = peak_bytes(lambda: index.search(one, K, "a2v", backend="faiss"))
        f_peak_batch = peak_bytes(lambda: index.search(batch, K, "a2v", backend="faiss"))
        print(f"{'faiss':<8} {t_fone * 1e3:14.2f} ms {t_fbatch:11.3f} s {f_peak_one / 2**20:8.1f} / "
              f"{f_peak_batch / 2**20:.1f} MiB (+ its own copy of the vectors, not tracked; build {t_build:.2f} s)")
        same = float(np.mean(faiss_batch.index == exact_batch.index))
        print(f"faiss vs exact: identical top-{K} entries {same:.4%}; one query identical: "
              f"{bool(np.array_equal(faiss_one.index, exact_one.index))}")
    else:
        print("faiss: not installed (pip install faiss-cpu) - skipped")
    print("peak extra memory: one query / the batch, allocated during the search beyond the index")
    print(f"process peak resident size: {rss_imports:.0f} MiB after imports (torch, pyarrow, faiss), {rss_before:.0f} "
          f"MiB before the searches (making and loading the set), "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB at the end")


if __name__ == "__main__":
    main()
