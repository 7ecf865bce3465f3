"""mAP of 5,621 queries against 5,621 gallery items: hscmae.metrics vs the per-query scikit-learn loop.

Prints both times, their ratio and the absolute difference of the two mAP values (no asserts).
Run: ``.venv/bin/python bench/bench_eval.py``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from sklearn.metrics.pairwise import cosine_similarity
from tqdm import tqdm

from hscmae.metrics import mean_average_precision

N, DIM, CLASSES = 5621, 128, 10


def sklearn_loop(queries: np.ndarray, gallery: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> float:
    scores = cosine_similarity(queries, gallery)
    return float(np.mean([average_precision_score(g_labels == q_labels[i], scores[i])
                          for i in tqdm(range(len(scores)), desc="sklearn per-query loop")]))


def main() -> None:
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(N, DIM)).astype(np.float32), rng.normal(size=(N, DIM)).astype(np.float32)
    q_labels, g_labels = rng.integers(0, CLASSES, N), rng.integers(0, CLASSES, N)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{N} queries x {N} gallery, {DIM}-d, {CLASSES} classes; device {device}, "
          f"torch threads {torch.get_num_threads()}")

    mean_average_precision(queries[:64], gallery, q_labels[:64], g_labels)  # warm-up
    start = time.perf_counter()
    ours = mean_average_precision(queries, gallery, q_labels, g_labels)
    if device == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    reference = sklearn_loop(queries, gallery, q_labels, g_labels)
    t_ref = time.perf_counter() - start

    print(f"hscmae.metrics.mean_average_precision: {t_ours:8.3f} s  mAP {ours:.8f}")
    print(f"sklearn per-query loop:                {t_ref:8.3f} s  mAP {reference:.8f}")
    print(f"speed-up {t_ref / t_ours:.1f}x; |mAP difference| {abs(ours - reference):.2e}")


if __name__ == "__main__":
    main()
