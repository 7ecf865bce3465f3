"""Evaluation speed at 5,621 test clips (VEGAS test size): each mAP beside its floor, and a full pass.

For each mAP (audio->visual, visual->audio, plain and after linear CCA) it prints the time of
``hscmae.metrics.mean_average_precision`` beside the floor measured in the same run: one
``torch.sort`` of that direction's float32 score matrix (best of ``--repeats``, run back to back),
and one values-only ``np.sort`` of it (the sort the metric uses on the CPU).
Then the full evaluation pass: embedding the clips with an HSC-MAE model (random init, 128-d
audio and 1,024-d visual seconds), CCA projection, both directions plain and +CCA. Last, the
audio->visual mAP against the per-query scikit-learn loop on float64 cosines (``--no-sklearn``
skips it). No asserts. Run: ``.venv/bin/python bench/bench_eval.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from sklearn.metrics.pairwise import cosine_similarity
from tqdm import tqdm

from hscmae.cca import fit_cca
from hscmae.config import ModelConfig
from hscmae.data import ClipArrays
from hscmae.metrics import mean_average_precision
from hscmae.model import HSCMAE
from hscmae.train import embed

N, SECONDS, DIMS, CLASSES = 5621, 10, {"audio": 128, "visual": 1024}, 10


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Shortest wall time of ``repeats`` calls of ``fn`` (CUDA synchronised), and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def clips(seed: int) -> ClipArrays:
    """Random clips shaped like VEGAS features, with a weak class signal so that mAP is not at chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    feats = {m: (rng.normal(size=(N, SECONDS, d)) + rng.normal(size=(CLASSES, 1, d))[labels]).astype(np.float32)
             for m, d in DIMS.items()}
    valid = np.ones((N, SECONDS), dtype=bool)
    return ClipArrays(audio=feats["audio"], visual=feats["visual"], audio_valid=valid, visual_valid=valid,
                      label_id=labels)


def sklearn_loop(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    scores = cosine_similarity(queries.astype(np.float64), gallery.astype(np.float64))
    return float(np.mean([average_precision_score(labels == labels[i], scores[i])
                          for i in tqdm(range(len(scores)), desc="sklearn per-query loop", disable=None)]))


def sort_floors(queries: np.ndarray, gallery: np.ndarray) -> tuple[Callable[[], object], Callable[[], object]]:
    """One ``torch.sort`` of the float32 cosine matrix, and one values-only ``np.sort`` of it (made beforehand)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, g = (torch.nn.functional.normalize(torch.as_tensor(x, device=device).float(), dim=1) for x in (queries, gallery))
    scores = q @ g.T
    return lambda: torch.sort(scores, dim=1), lambda: np.sort(scores.cpu().numpy(), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the (slow) scikit-learn reference")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = clips(0)
    torch.manual_seed(0)
    model = HSCMAE(in_dims=data.dims, config=ModelConfig()).to(device)
    model.set_input_stats(dict(zip(("audio", "visual"), data.pooled())))
    audio, visual = embed(model, data)
    cca = fit_cca(*embed(model, clips(1)), k=audio.shape[1], ridge=1e-3)
    labels = data.label_id
    print(f"{N} test clips x {N}, {audio.shape[1]}-d embeddings, {CLASSES} classes; device {device}, "
          f"torch threads {torch.get_num_threads()}; best of {args.repeats}")

    mean_average_precision(audio[:64], visual, labels[:64], labels)  # warm-up
    views = {"": (audio, visual), "+CCA ": cca.embed(audio, visual)}
    values = {}
    for prefix, (a, v) in views.items():
        for name, (q, g) in (("A->V", (a, v)), ("V->A", (v, a))):
            torch_sort, np_sort = sort_floors(q, g)
            floor, _ = best_time(torch_sort, args.repeats)
            values_only, _ = best_time(np_sort, args.repeats)
            ours, values[prefix + name] = best_time(lambda: mean_average_precision(q, g, labels, labels), args.repeats)
            print(f"mAP {prefix + name:9s} {values[prefix + name]:.6f}: {ours:6.3f} s; floor (one torch.sort) "
                  f"{floor:6.3f} s, ratio {ours / floor:.2f}; one values-only np.sort {values_only:6.3f} s, "
                  f"ratio {ours / values_only:.2f}")

    def full_pass() -> list[float]:
        a, v = embed(model, data)
        ca, cv = cca.embed(a, v)
        return [mean_average_precision(x, y, labels, labels) for x, y in ((a, v), (v, a), (ca, cv), (cv, ca))]

    seconds, _ = best_time(full_pass, args.repeats)
    print(f"full evaluation pass (embed {N} clips, CCA projection, A->V and V->A, plain and +CCA): {seconds:.3f} s")
    if not args.no_sklearn:
        reference = sklearn_loop(audio, visual, labels)
        print(f"A->V mAP vs scikit-learn: ours {values['A->V']:.8f}, sklearn {reference:.8f}, "
              f"|difference| {abs(values['A->V'] - reference):.2e}")


if __name__ == "__main__":
    main()
