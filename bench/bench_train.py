"""Seconds per training epoch at VEGAS scale, with the authors' encoder sizes and the demo preset side by side.

Random synthetic arrays shaped like VEGAS features (22,482 training clips, T=10 seconds, 128-d audio,
1024-d visual), batch 512, default method configs (time masking drops seconds), model sizes from
:data:`hscmae.config.MODEL_PRESETS` (``paper``: 1,024 wide, two hidden layers, like the authors'
encoders; ``demo``: one hidden layer of 128). Every row runs in this one process on the same data.
Each epoch's time includes embedding and scoring the validation clips, the per-epoch diagnostics
(gradient shares, soft-positive purity, validation canonical correlations) and, for methods
without the local term, fitting the linear-CCA output map on the training latents.

    python bench/bench_train.py --epochs 2 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
import torch

from hscmae.config import MODEL_PRESETS, methods
from hscmae.data import ClipArrays
from hscmae.inference import resolve_device
from hscmae.train import fit


def synthetic(n: int, *, seconds: int, dims: tuple[int, int], seed: int) -> ClipArrays:
    """Random features ``[n, seconds, D]``, every second valid."""
    rng = np.random.default_rng(seed)
    valid = np.ones((n, seconds), dtype=bool)
    return ClipArrays(
        audio=rng.standard_normal((n, seconds, dims[0]), dtype=np.float32),
        visual=rng.standard_normal((n, seconds, dims[1]), dtype=np.float32),
        audio_valid=valid, visual_valid=valid.copy(), label_id=rng.integers(0, 10, n),
    )


def recall_at_1(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> float:
    """Share of audio clips whose nearest visual clip (cosine) is their own pair."""
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    v = visual / np.linalg.norm(visual, axis=1, keepdims=True)
    return float(((a @ v.T).argmax(1) == np.arange(len(a))).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-clips", type=int, default=22482)
    parser.add_argument("--val-clips", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", nargs="+", default=["hscmae"], choices=sorted(methods()))
    parser.add_argument("--presets", nargs="+", default=["paper", "demo"], choices=sorted(MODEL_PRESETS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--mask-modes", nargs="+", default=["time"], choices=["time", "element"],
                        help="masking of the student's view (time: drop seconds, the default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = synthetic(args.train_clips, seconds=10, dims=(128, 1024), seed=0)
    val = synthetic(args.val_clips, seconds=10, dims=(128, 1024), seed=1)
    device = resolve_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, train {len(train)} clips, "
          f"val {len(val)}, batch 512, {args.epochs} epochs")
    print(f"{'method':<16}{'preset':<8}{'mask':<9}{'parameters':>12}{'s/epoch (mean)':>16}{'s/epoch (last)':>16}")
    for name, preset, mode in itertools.product(args.methods, args.presets, args.mask_modes):
        method = methods()[name].updated({"model": dataclasses.asdict(MODEL_PRESETS[preset]),
                                          "loss": {"mask_mode": mode},
                                          "train": {"epochs": args.epochs, "device": str(device)}})
        result = fit(method, train, val, seed=0, scorer=recall_at_1, progress=False)
        seconds = [h["seconds"] for h in result.history]
        params = sum(p.numel() for p in result.model.parameters())
        print(f"{name:<16}{preset:<8}{mode:<9}{params:>12,}{float(np.mean(seconds)):>16.2f}{seconds[-1]:>16.2f}",
              flush=True)


if __name__ == "__main__":
    main()
