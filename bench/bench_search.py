"""Cross-modal search against 100,000 clips: latency of one query and of a batch, beside its floor; peak memory.

Exact search (``hscmae.search.Index``) is timed interleaved with its floor, on the same random embeddings:
one float32 matrix product of the unit queries with the float32 unit gallery (the index makes it once, when
it is built; the floor uses an identical copy) and a values-only partial selection (``np.partition``: each
query's k-th best score), in the same blocks of queries as the search. Each figure is the median of several
rounds, the ratio the median of the rounds' ratios. When ``faiss-cpu`` is installed a FAISS flat inner-product
index is timed beside it (no ties in random data, so both must agree on the top 10). Memory: the peak of
Python-tracked allocations (NumPy's included) during the searches, above the index itself; and the process's
peak resident size. Prints figures, asserts nothing.
Run: ``.venv/bin/python bench/bench_search.py [--clips 100000 --dim 32 --threads 1]``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from hscmae.embeddings import Embeddings, write_embeddings
from hscmae.search import BYTES_PER_PAIR, DEFAULT_CHUNK_BYTES, Index, faiss_available, unit_rows

K = 10
REPEATS = 50
BATCH = 1000
BATCH_REPEATS = 5


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each of ``fns``, called in turn for ``repeats`` rounds (after one warm-up each), and the
    median over rounds of each one's time over the first one's."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = times[next(iter(fns))]
    return ({name: statistics.median(t) for name, t in times.items()},
            {name: statistics.median(a / b for a, b in zip(t, base)) for name, t in times.items()})


def floor(unit_gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k-th best score ``[Q]`` over ``unit_gallery [N, L]`` (float32) of each of ``queries [Q, L]``: one float32
    product of the unit queries with the gallery and a values-only partial selection (``np.partition``; the top k
    are the clips scoring at least that), per block of queries as the search makes."""
    unit = unit_rows(queries, "queries").astype(np.float32)
    block = max(1, DEFAULT_CHUNK_BYTES // (BYTES_PER_PAIR * len(unit_gallery)))
    n, kth = len(unit_gallery), np.empty(len(unit), dtype=np.float32)
    for start in range(0, len(unit), block):
        kth[start:start + block] = np.partition(unit[start:start + block] @ unit_gallery.T, n - k, axis=1)[:, n - k]
    return kth


def peak_bytes(fn: Callable[[], object]) -> int:
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
    parser.add_argument("--threads", type=int, help="BLAS threads (default: the library's own choice)")
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
    # the float32 unit gallery the index made when it was built (the floor reads the same vectors)
    unit_gallery = np.concatenate([unit_rows(index.visual[s:s + 65536], "visual").astype(np.float32)
                                   for s in range(0, n, 65536)])
    index_mb = (index.audio.nbytes + index.visual.nbytes) / 2**20
    one, batch = index.audio[:1], index.audio[:BATCH]
    limits = threadpool_limits(args.threads) if args.threads else contextlib.nullcontext()
    print(f"{n} clips, {args.dim}-d embeddings (raw vectors {index_mb:.1f} MiB, float32 unit vectors as much again); "
          f"top {K}; Index.load from Parquet (normalising once) {t_load:.2f} s; BLAS threads "
          f"{args.threads or 'default'}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    backends = {"exact": {}} | ({"faiss": {"backend": "faiss"}} if faiss_available() else {})
    with limits:
        for queries, repeats in ((one, REPEATS), (batch, BATCH_REPEATS)):
            fns = {"floor": lambda q=queries: floor(unit_gallery, q, K)}
            fns |= {name: lambda q=queries, kw=kw: index.search(q, K, "a2v", **kw) for name, kw in backends.items()}
            median, ratio = interleaved(fns, repeats)
            figures = [f"{name} {median[name] * 1e3:.2f} ms" + ("" if name == "floor" else f" (x{ratio[name]:.2f})")
                       for name in fns]
            print(f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'} (median of {repeats} interleaved rounds): "
                  + ", ".join(figures))
        peak_one = peak_bytes(lambda: index.search(one, K, "a2v"))
        peak_batch = peak_bytes(lambda: index.search(batch, K, "a2v"))
        print(f"exact peak extra memory: {peak_one / 2**20:.1f} MiB (one query) / {peak_batch / 2**20:.1f} MiB "
              f"({BATCH} queries), allocated during the search beyond the index")
        if faiss_available():
            exact_one, exact_batch = index.search(one, K, "a2v"), index.search(batch, K, "a2v")
            faiss_one, faiss_batch = (index.search(x, K, "a2v", backend="faiss") for x in (one, batch))
            same = float(np.mean(faiss_batch.index == exact_batch.index))
            print(f"faiss vs exact: identical top-{K} entries {same:.4%}; one query identical: "
                  f"{bool(np.array_equal(faiss_one.index, exact_one.index))}; faiss holds its own copy of the vectors")
        else:
            print("faiss: not installed (pip install faiss-cpu) - skipped")
    print("floor: float32 product over the unit gallery + np.partition of each query's scores (its k-th best); "
          "(xR): time over the floor's, median of the rounds' ratios")
    print(f"process peak resident size: {rss_imports:.0f} MiB after imports (torch, pyarrow, faiss), {rss_before:.0f} "
          f"MiB before the searches (making and loading the set), "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB at the end")


if __name__ == "__main__":
    main()
