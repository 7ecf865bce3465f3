"""Evaluation speed at 5,621 test clips (VEGAS test size): each mAP beside its floor, and a full pass.

For each mAP (audio->visual, visual->audio, plain and after linear CCA) it times
``hscmae.metrics.mean_average_precision`` interleaved with its floor, in rounds (``--repeats``): the
float32 score matrix product and one values-only sort of each row (NumPy's in-place sort on the CPU, as the
metric uses; ``torch.sort`` on CUDA), for the whole matrix at once, and the same chunk by chunk with the
metric's chunk size (stricter: each chunk's scores stay in the CPU cache from the product to the sort).
Each time is the median over rounds, each ratio (``xR``, ours over a floor) the median of the rounds' ratios;
on the CPU both for wall time and for this process's CPU time (less disturbed by other load on a shared machine).
Then the full evaluation pass: embedding the clips with an HSC-MAE model (random init, 128-d
audio and 1,024-d visual seconds), CCA projection, both directions plain and +CCA. Last, the
audio->visual mAP against the per-query scikit-learn loop on float64 cosines (``--no-sklearn``
skips it). No asserts. Run: ``.venv/bin/python bench/bench_eval.py [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
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
from hscmae.metrics import BYTES_PER_PAIR, DEFAULT_CHUNK_BYTES, mean_average_precision
from hscmae.model import HSCMAE
from hscmae.inference import embed

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


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each of ``fns``, called in turn for ``repeats`` rounds, per clock: ``wall`` (CUDA synchronised) and
    ``cpu`` (this process's CPU time, which other load on the machine disturbs less)."""
    times: dict[str, dict[str, list[float]]] = {"wall": {name: [] for name in fns}, "cpu": {name: [] for name in fns}}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times["wall"][name].append(time.perf_counter() - wall)
            times["cpu"][name].append(time.process_time() - cpu)
    return times


def summary(times: dict[str, list[float]]) -> str:
    """Median seconds of ours and each floor, and the median over rounds of ours over that floor."""
    ours = times["ours"]
    return f"ours {statistics.median(ours):.3f} s, " + ", ".join(
        f"{name} {statistics.median(t):.3f} s (x{statistics.median(a / b for a, b in zip(ours, t)):.2f})"
        for name, t in times.items() if name != "ours")


def map_floors(queries: np.ndarray, gallery: np.ndarray) -> dict[str, Callable[[], None]]:
    """The floor of one mAP, two ways: the float32 cosine matrix product and one values-only sort of each row
    (NumPy's in place on the CPU, as the metric uses; ``torch.sort`` on CUDA), either for the whole matrix at
    once or chunk by chunk with the metric's chunk size (the product then stays in the CPU cache for the sort).
    Unit vectors and output buffers are made beforehand."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, g = (torch.nn.functional.normalize(torch.as_tensor(x, device=device).float(), dim=1) for x in (queries, gallery))
    step = max(1, DEFAULT_CHUNK_BYTES // (BYTES_PER_PAIR * len(g)))
    buffer = torch.empty(len(q), len(g), device=device)

    def product_and_sort(rows: slice) -> None:
        scores = torch.mm(q[rows], g.T, out=buffer[rows])
        if device == "cpu":
            scores.numpy().sort(axis=1)
        else:
            torch.sort(scores, dim=1)

    return {"floor": lambda: product_and_sort(slice(None)),
            "chunked floor": lambda: [product_and_sort(slice(start, start + step)) for start in range(0, len(q), step)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds of each mAP and its floor")
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
          f"torch threads {torch.get_num_threads()}; medians of {args.repeats} interleaved rounds; floor: the float32 "
          f"score matrix product + one values-only sort of each row")

    views = {"": (audio, visual), "+CCA ": cca.embed(audio, visual)}
    values = {}
    for prefix, (a, v) in views.items():
        for name, (q, g) in (("A->V", (a, v)), ("V->A", (v, a))):
            values[prefix + name] = mean_average_precision(q, g, labels, labels)  # also the warm-up
            times = interleaved(map_floors(q, g) | {"ours": lambda: mean_average_precision(q, g, labels, labels)},
                                args.repeats)
            print(f"mAP {prefix + name:9s} {values[prefix + name]:.6f}  " + " | ".join(
                f"{clock}: {summary(per)}" for clock, per in times.items() if clock == "wall" or device == "cpu"))

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
