"""Every GPU path measured in one call: extraction (float16 autocast), training, evaluation, search.

Written for the day a GPU is lent for a few minutes, once: ``python bench/device_check.py --out DIR``
(or ``make device-check``) measures, in one process and in a few minutes on one modern GPU:

* environment: the device, torch / CUDA / cuDNN versions, free GPU memory;
* extraction: demo clips (``pipeline.datasets.demo_videos``) through VGGish + ResNet-50 with RANDOM
  weights (speed and the float16-vs-float32 difference do not need trained ones): end-to-end
  (MP4 -> shards) and forward-only clips/s with float16 autocast, their ratio, and the largest
  feature difference against a float32 CPU run of the same clips (a wrong autocast shows there);
* training: seconds per epoch of ``hscmae`` and ``clip`` at the ``paper`` preset on a generated
  VEGAS-sized set (22,482 train clips, batch 512), and peak GPU memory;
* evaluation: a full pass at 5,621 test clips (embed, CCA, both directions, plain and +CCA), each
  mAP beside its floor (one sort of its score matrix, as the metric sorts on that device), and the
  A->V mAP against the CPU's (equal to 1e-6);
* search: 1 and 1,000 queries against 100,000 clips, exact, on the device, beside
  ``hscmae.search.Index`` (which searches on the CPU) and with the same top 10.

Results go to ``<output root>/device_check/device_check.{json,md}``, rewritten after every part
(a run cut short keeps what it measured), and beside them ``eval_embeddings.npz``: the plain test
embeddings the A->V mAP was computed on, so anyone can check it independently. A part that
raises is recorded as its error line and the next part still runs (exit status 1 at the end).
Without CUDA everything runs on the CPU, every GPU-only figure is marked not measured (never run
on a GPU), and the exit status is 0. ``--small`` shrinks every size so that a CPU run takes well
under a minute (``tests/test_device_check.py`` runs it). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extractors.config import ExtractConfig
from extractors.extract import ClipJob, Extractors, extract_features
from extractors.visual import preprocess_frames
from flows.common import output_root
from hscmae.config import MODEL_PRESETS, methods
from hscmae.data import ClipArrays
from hscmae.evaluate import evaluate, retrieval_score, select_cca
from hscmae.inference import embed
from hscmae.metrics import mean_average_precision
from hscmae.model import HSCMAE
from hscmae.search import SCORE_GRID, Index, unit_rows
from hscmae.train import fit
from pipeline.datasets.demo_videos import CLASSES, DemoConfig, write_demo
from pipeline.features.failures import Failure
from pipeline.features.shards import load_feature_set
from pipeline.io.atomic import atomic_path
from pipeline.io.errors import UserError, add_debug_argument, user_errors
from pipeline.media.segment import Segment, segment_clip

NO_CUDA = "cuda: not available — GPU rows not measured (CPU figures only; every CUDA branch never run on a GPU)"
NOT_MEASURED = "not measured: never run on a GPU (cuda not available)"
DIMS = {"audio": 128, "visual": 1024}  # VEGAS-like per-second features, as bench/bench_train.py
CLASSES_GENERATED, BATCH, K, LATENT_DIM = 10, 512, 10, 32
SIGNAL = 0.07  # class-centre scale of the generated clips: the full-size test mAP about 0.5 (0.3: saturated at 1)
SECTIONS = ("environment", "extraction", "training", "evaluation", "search")
TABLE_HEAD = ("| part | figure | value |", "|---|---|---|")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each part measures: the defaults are the full check, :data:`SMALL` the CPU smoke run."""

    demo_clips: int = 20
    demo_seconds: float = 10.0
    train_clips: int = 22_482
    val_clips: int = 2_000
    test_clips: int = 5_621
    seconds: int = 10  # per-second feature rows of each generated clip
    epochs: int = 2
    gallery: int = 100_000
    queries: int = 1_000
    repeats: int = 3  # timed runs of each measurement (best or median kept)


SMALL = Sizes(demo_clips=2, demo_seconds=2.0, train_clips=512, val_clips=128, test_clips=256, seconds=2,
              epochs=1, gallery=4_096, queries=100, repeats=1)


# --- timing and memory ----------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on the CPU), so wall times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[list[float], Any]:
    """Wall seconds of ``repeats`` synchronised calls of ``fn``, and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds, result


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | str:
    """Peak CUDA memory allocated since :func:`reset_peak` (MiB), or the not-measured line."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else NOT_MEASURED


def measured_on(device: torch.device) -> str:
    """Where a part's GPU figures come from, or the not-measured line."""
    return f"measured on {device}" if device.type == "cuda" else NOT_MEASURED


# --- the parts ------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions and free memory."""
    found: dict[str, Any] = {"device": str(device), "cuda_available": torch.cuda.is_available(),
                             "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
                             "python": platform.python_version(), "cpu_cores": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(),
                             "float32_matmul_precision": torch.get_float32_matmul_precision()}  # "highest": no TF32
    if device.type != "cuda":
        return {**found, "gpu": NO_CUDA, "cudnn": NOT_MEASURED, "gpu_free_mib": NOT_MEASURED,
                "gpu_total_mib": NOT_MEASURED}
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)
    return {**found, "gpu": f"{props.name} (compute capability {props.major}.{props.minor})",
            "cudnn": torch.backends.cudnn.version(), "gpu_free_mib": free / 2**20, "gpu_total_mib": total / 2**20}


def model_batches(models: Extractors, segments: list[Segment], batch_clips: int,
                  device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The models' inputs of ``segments`` in the pipeline's batches of ``batch_clips`` clips, prepared beforehand
    so a forward-only timing sees the models alone: ``(log-mel examples, preprocessed frames)`` per batch."""
    batches = []
    with torch.inference_mode():
        for i in range(0, len(segments), batch_clips):
            group = segments[i:i + batch_clips]
            examples, _ = models.audio.frontend.examples([torch.from_numpy(s.audio).to(device) for s in group])
            frames = torch.from_numpy(np.concatenate([s.frames for s in group])).to(device)
            batches.append((examples, preprocess_frames(frames, models.visual.preprocess)))
    return batches


def check_extraction(sizes: Sizes, device: torch.device, work: Path) -> dict[str, Any]:
    """Demo clips through VGGish + ResNet-50 (random weights): speed with autocast, difference to float32 CPU."""
    config = ExtractConfig(visual_model="resnet50", audio_weights="random", visual_weights="random",
                           device=str(device), amp=True)
    # One writer process: no fork of a process that may hold a CUDA context (20 clips take seconds).
    labels = write_demo(work / "demo", sizes.demo_clips, config=DemoConfig(seconds=sizes.demo_seconds), workers=1)
    clips = [(Path(path).stem, work / "demo" / path, label) for path, label in zip(labels["path"], labels["label"])]

    def jobs() -> list[ClipJob]:
        return [ClipJob(clip_id=c, label=label, label_id=CLASSES.index(label), split="test",
                        load=partial(segment_clip, path, c, 0.0, sizes.demo_seconds)) for c, path, label in clips]

    models = Extractors(config)
    extract_features(jobs()[:2], work / "warmup", config, extractors=models)  # allocator, kernels: untimed
    reset_peak(device)
    segments: list[Segment] = [s for s in (job.load() for job in jobs()) if not isinstance(s, Failure)]
    batches = model_batches(models, segments, config.batch_clips, device)

    def forward_only() -> None:
        with torch.inference_mode():
            for examples, pixels in batches:
                models.batched(models.audio, examples, DIMS["audio"])
                models.batched(models.visual.backbone, pixels, models.visual.dim)

    end_to_end, forward = [], []
    for run in range(sizes.repeats):  # alternated, so both see the same load; the best of each is kept
        seconds, result = timings(lambda: extract_features(jobs(), work / f"features-{run}", config,
                                                           extractors=models), device, 1)
        end_to_end += seconds
        forward += timings(forward_only, device, 1)[0]
    found = load_feature_set(result.shards)
    # The float32 CPU reference: the same weights (same seed), the same clips in the same batches.
    reference = Extractors(dataclasses.replace(config, device="cpu", amp=False))
    ref = {}
    for i in range(0, len(segments), config.batch_clips):
        group = segments[i:i + config.batch_clips]
        ref.update({s.clip_id: pair for s, pair in zip(group, reference.features(group))})
    out: dict[str, Any] = {
        "cuda": measured_on(device),
        "weights": "random (VGGish + ResNet-50 untrained, said so: speed does not depend on them)",
        "amp": "float16 autocast" if models.amp else "off: float32 (autocast runs only on CUDA)",
        "clips": len(segments), "seconds_per_clip": sizes.demo_seconds, "failures": len(result.failures),
        "end_to_end_clips_per_s": len(segments) / min(end_to_end),
        "forward_only_clips_per_s": len(segments) / min(forward),
        "ratio_end_to_end_over_forward": min(forward) / min(end_to_end),
        "peak_gpu_mib": peak_mib(device),
    }
    for m, column in (("audio", 0), ("visual", 1)):
        diff = max(float(np.abs(x - ref[c][column]).max()) for c, x in zip(found.clip_id, getattr(found, m)))
        scale = max(float(np.abs(ref[c][column]).max()) for c in found.clip_id)
        out.update({f"{m}_max_abs_diff_vs_cpu_fp32": diff, f"{m}_max_abs_value_cpu_fp32": scale,
                    f"{m}_relative_diff_vs_cpu_fp32": diff / scale})
    return out


def generated(n: int, seconds: int, seed: int) -> ClipArrays:
    """Random clips ``[n, seconds, D]`` shaped like VEGAS features, with a class signal shared by every
    split (centres drawn from one seed), so that mAP is between chance and 1 and a wrong one shows."""
    centres = np.random.default_rng(1000)
    centre = {m: centres.standard_normal((CLASSES_GENERATED, 1, d), dtype=np.float32) for m, d in DIMS.items()}
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES_GENERATED, n)
    feats = {m: rng.standard_normal((n, seconds, d), dtype=np.float32) + SIGNAL * centre[m][labels]
             for m, d in DIMS.items()}
    valid = np.ones((n, seconds), dtype=bool)
    return ClipArrays(audio=feats["audio"], visual=feats["visual"], audio_valid=valid, visual_valid=valid.copy(),
                      label_id=labels)


def check_training(sizes: Sizes, device: torch.device, train: ClipArrays, val: ClipArrays
                   ) -> tuple[dict[str, Any], HSCMAE]:
    """Seconds per epoch (``hscmae.train.fit``, val scored by mean mAP) of hscmae and clip at the paper preset."""
    out: dict[str, Any] = {"cuda": measured_on(device),
                           "train_clips": len(train), "val_clips": len(val), "batch": BATCH, "preset": "paper",
                           "epochs": sizes.epochs}
    models = {}
    for name in ("hscmae", "clip"):
        method = methods()[name].updated({"model": dataclasses.asdict(MODEL_PRESETS["paper"]),
                                          "train": {"epochs": sizes.epochs, "batch_size": BATCH,
                                                    "device": str(device)}})
        reset_peak(device)
        result = fit(method, train, val, seed=0, scorer=retrieval_score, progress=False)
        seconds = [h["seconds"] for h in result.history]
        out.update({f"{name}_parameters": sum(p.numel() for p in result.model.parameters()),
                    f"{name}_first_epoch_s": seconds[0], f"{name}_s_per_epoch": seconds[-1],
                    f"{name}_peak_gpu_mib": peak_mib(device)})
        models[name] = result.model
    return out, models["hscmae"]


def sort_floor(queries: np.ndarray, gallery: np.ndarray, device: torch.device) -> Callable[[], object]:
    """One sort of the float32 cosine matrix ``[Nq, Ng]``, made beforehand, as the metric sorts on ``device``:
    ``torch.sort`` on CUDA, a values-only ``np.sort`` on the CPU."""
    q, g = (torch.nn.functional.normalize(torch.as_tensor(x, device=device).float(), dim=1) for x in (queries, gallery))
    scores = q @ g.T
    if device.type == "cuda":
        return lambda: torch.sort(scores, dim=1)
    values = scores.numpy()
    return lambda: np.sort(values, axis=1)


def check_evaluation(sizes: Sizes, device: torch.device, model: HSCMAE, train: ClipArrays, val: ClipArrays,
                     test: ClipArrays, out_dir: Path) -> dict[str, Any]:
    """The test split's full evaluation pass, each mAP beside its floor, and A->V against the CPU."""
    labels = test.label_id
    reset_peak(device)
    [cca_s], (cca, _) = timings(lambda: select_cca(embed(model, train), embed(model, val), val.label_id,
                                                   k=model.config.latent), device, 1)
    warm = test.subset(np.arange(min(64, len(test))))  # kernels and allocator, untimed
    mean_average_precision(*embed(model, warm), warm.label_id, warm.label_id, device=device)
    full, found = timings(lambda: evaluate(*embed(model, test), labels, posthoc=cca), device, sizes.repeats)
    audio, visual = embed(model, test)
    out: dict[str, Any] = {"cuda": measured_on(device),
                           "test_clips": len(test), "embedding_dim": audio.shape[1],
                           "floor": "one torch.sort" if device.type == "cuda" else "one values-only np.sort",
                           "full_pass_s": min(full), "cca_fit_s": cca_s}
    views: dict[str, tuple[np.ndarray, np.ndarray]] = {"": (audio, visual), "cca_": cca.embed(audio, visual)}
    for prefix, (a, v) in views.items():
        for name, (q, g) in (("a2v", (a, v)), ("v2a", (v, a))):
            seconds, value = timings(partial(mean_average_precision, q, g, labels, labels, device=device),
                                     device, sizes.repeats)
            floor, _ = timings(sort_floor(q, g, device), device, sizes.repeats)
            out.update({f"{prefix}{name}_map": value, f"{prefix}{name}_map_s": min(seconds),
                        f"{prefix}{name}_floor_s": min(floor), f"{prefix}{name}_over_floor": min(seconds) / min(floor),
                        f"{prefix}{name}_map_in_full_pass": found.metrics[f"{prefix}{name}_map"]})
    cpu = mean_average_precision(audio, visual, labels, labels, device="cpu")
    out.update({"a2v_map_cpu": cpu, "a2v_map_abs_diff_vs_cpu": abs(out["a2v_map"] - cpu),
                "a2v_map_matches_cpu_1e-6": abs(out["a2v_map"] - cpu) <= 1e-6, "peak_gpu_mib": peak_mib(device)})
    np.savez(out_dir / "eval_embeddings.npz", audio=audio, visual=visual, label_id=labels)
    return out


def device_search(gallery: torch.Tensor, queries: np.ndarray, k: int, *,
                  max_chunk_bytes: int = 512 * 2**20) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of ``queries [Q, L]`` against unit rows ``gallery [N, L]`` (float64, on its device),
    ranked as :meth:`hscmae.search.Index.search` ranks: float64 cosines on its :data:`SCORE_GRID`, ties to
    the lower gallery row. Returns ``(index [Q, k], score [Q, k])``.

    Score and row are packed into one int64 key (grid units, then the row reversed), so one
    ``torch.topk`` finds exactly that order whatever its own tie order.
    """
    shift = max(1, (len(gallery) - 1).bit_length())
    if shift > 25:  # |grid units| <= 2^36 + 1: key must fit in 63 bits
        raise ValueError(f"gallery of {len(gallery)} clips is too large for one int64 key per score")
    low = (1 << shift) - 1
    q = torch.from_numpy(unit_rows(queries, "queries")).to(gallery.device)
    rows = torch.arange(len(gallery), device=gallery.device)
    step = max(1, max_chunk_bytes // (24 * len(gallery)))  # float64 scores, int64 units and keys
    index, score = [], []
    for start in range(0, len(q), step):
        units = torch.round(q[start:start + step] @ gallery.T / SCORE_GRID).long()
        keys = torch.topk(units * (1 << shift) + (low - rows), k, dim=1).values
        index.append((low - (keys & low)).cpu().numpy())
        score.append(((keys >> shift).double() * SCORE_GRID).cpu().numpy())
    return np.concatenate(index), np.concatenate(score)


def check_search(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """1 and ``sizes.queries`` queries against ``sizes.gallery`` clips: exact on the device, ``Index`` on the CPU."""
    rng = np.random.default_rng(2)
    n = sizes.gallery
    vectors = {m: rng.standard_normal((n, LATENT_DIM), dtype=np.float32) for m in ("audio", "visual")}
    index = Index(clip_id=np.array([f"clip{i:06d}" for i in range(n)], dtype=object),
                  label=np.array([f"c{i % 28}" for i in range(n)], dtype=object),
                  split=np.full(n, "test", dtype=object), audio=vectors["audio"], visual=vectors["visual"])
    one, batch = index.audio[:1], index.audio[:sizes.queries]
    reset_peak(device)
    [build_s], gallery = timings(lambda: torch.from_numpy(unit_rows(index.visual, "gallery")).to(device), device, 1)
    device_search(gallery, one, K)  # warm-up: kernels
    one_s, _ = timings(lambda: device_search(gallery, one, K), device, 20)
    batch_s, (found_index, found_score) = timings(lambda: device_search(gallery, batch, K), device, sizes.repeats)
    peak = peak_mib(device)
    index.search(one, K, "a2v")  # warm-up
    cpu_one_s, _ = timings(lambda: index.search(one, K, "a2v"), torch.device("cpu"), 20)
    cpu_batch_s, exact = timings(lambda: index.search(batch, K, "a2v"), torch.device("cpu"), sizes.repeats)
    return {"cuda": measured_on(device),
            "gallery_clips": n, "dim": LATENT_DIM, "top_k": K, "queries": len(batch),
            "device_gallery_upload_s": build_s, "device_1_query_ms": statistics.median(one_s) * 1e3,
            f"device_{len(batch)}_queries_s": statistics.median(batch_s),
            "index_cpu_1_query_ms": statistics.median(cpu_one_s) * 1e3,
            f"index_cpu_{len(batch)}_queries_s": statistics.median(cpu_batch_s),
            "topk_identical_to_index_share": float(np.mean(found_index == exact.index)),
            "topk_max_abs_score_diff_vs_index": float(np.abs(found_score - exact.score).max()),
            "peak_gpu_mib": peak}


# --- the report -----------------------------------------------------------------------------------

def _cell(name: str, value: Any) -> str:
    """How the Markdown table shows ``value``: mAPs to 6 decimals, differences in e-notation, 4 digits otherwise."""
    if isinstance(value, (bool, str)) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if "diff" in name:
        return f"{value:.2e}"
    return f"{value:.6f}" if name.endswith(("_map", "_map_cpu", "_map_in_full_pass")) else f"{value:,.4g}"


def table_rows(part: str, found: dict[str, Any]) -> list[str]:
    """One Markdown row per figure of ``part``."""
    return [f"| {part} | {name} | {_cell(name, value)} |" for name, value in found.items()]


def markdown(report: dict[str, Any]) -> str:
    """The report as one Markdown table (part, figure, value) under a short header."""
    env = report["environment"]
    lines = ["# Device check", "",
             f"{report['created']}, {'--small sizes' if report['small'] else 'full sizes'}, device {env['device']}, "
             f"torch {env['torch']} (CUDA build {env['torch_cuda_build']}), {report['seconds_total']:.1f} s in all.",
             ""]
    if not env["cuda_available"]:
        lines += [f"**{NO_CUDA}**", ""]
    lines += list(TABLE_HEAD)
    for part in SECTIONS:
        lines += table_rows(part, report.get(part, {}))
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """``device_check.json`` and ``device_check.md`` in ``out_dir``, each written whole."""
    with atomic_path(out_dir / "device_check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out_dir / "device_check.md") as tmp:
        tmp.write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes: a CPU smoke run well under a minute")
    parser.add_argument("--out", type=Path, help="output root (default: $HSCMAE_OUTPUTS or ./outputs)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    with user_errors(args.debug):
        out_dir = output_root(args.out) / "device_check"
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = SMALL if args.small else Sizes()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    start = last = time.perf_counter()
    report: dict[str, Any] = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "small": args.small, "sizes": dataclasses.asdict(sizes), "seconds_total": 0.0}
    failed: list[str] = []

    def record(part: str, measure: Callable[[], dict[str, Any]]) -> None:
        """Measure ``part``, add it with ``part_s`` to the report, rewrite the files and print its rows.

        A part that raises is recorded as its ``error`` line (traceback on stderr) and the next part
        still runs: a GPU lent once should yield every figure that can be had. The exit status is then 1.
        """
        nonlocal last
        try:
            found = measure()
        except Exception as exc:  # recorded in the report, printed, and turned into exit status 1
            traceback.print_exc()
            found = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(part)
        now = time.perf_counter()
        report[part] = {**found, "part_s": now - last}
        report["seconds_total"], last = now - start, now
        write_report(report, out_dir)
        print("\n".join(table_rows(part, report[part])), flush=True)

    if device.type != "cuda":
        print(NO_CUDA, flush=True)
    print("\n".join(TABLE_HEAD))
    record("environment", lambda: environment(device))
    with tempfile.TemporaryDirectory() as tmp:
        record("extraction", lambda: check_extraction(sizes, device, Path(tmp)))
    train, val, test = (generated(n, sizes.seconds, seed) for seed, n in
                        enumerate((sizes.train_clips, sizes.val_clips, sizes.test_clips)))
    trained: dict[str, HSCMAE] = {}

    def training() -> dict[str, Any]:
        found, trained["hscmae"] = check_training(sizes, device, train, val)
        return found

    record("training", training)
    if "hscmae" in trained:
        record("evaluation", lambda: check_evaluation(sizes, device, trained["hscmae"], train, val, test, out_dir))
    else:
        record("evaluation", lambda: {"error": "not run: it evaluates the model the training part trains"})
    record("search", lambda: check_search(sizes, device))
    print(f"wrote {out_dir / 'device_check.md'} and {out_dir / 'device_check.json'}")
    if failed:
        print(f"failed parts: {', '.join(failed)} (their error lines are in the table)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
