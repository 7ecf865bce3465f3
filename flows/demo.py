"""The whole path on a fresh machine: demo videos -> ``build-features`` -> ``train-eval`` -> table.

    python -m flows.demo                  # what `make demo` runs
    python -m flows.demo --clips 200 --seeds 0 1 2 3 4

No pretrained weights exist on a fresh machine, so the extractors run with random weights
(seeded, so every run gives the same features) and every table says so. The numbers show
that the path works end to end, not how well the method does on real data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.common import DEFAULT_OUT, VISUAL_MODELS

DEMO_CLIPS = 120
DEMO_SECONDS = 5.0
DEMO_SEEDS = [0, 1, 2]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--clips", type=int, default=DEMO_CLIPS, help="demo clips to generate")
    parser.add_argument("--seconds", type=float, default=DEMO_SECONDS, help="length of each demo clip")
    parser.add_argument("--visual-model", default="resnet50", choices=VISUAL_MODELS, help="frame extractor")
    parser.add_argument("--seeds", nargs="+", type=int, default=DEMO_SEEDS)
    parser.add_argument("--epochs", type=int, help="override every trainable method's epochs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root of build-features")
    parser.add_argument("--runs-root", default="runs", help="where the run directory goes")
    return parser.parse_args(argv)


if __name__ == "__main__":  # --help and argument errors answer before torch, pandas and Prefect load
    parse_arguments()

from prefect import flow  # noqa: E402

from extractors.extract import ExtractConfig  # noqa: E402
from flows.build_features import build_features  # noqa: E402
from flows.common import task_runner  # noqa: E402
from flows.train_eval import TrainEvalOutcome, train_eval  # noqa: E402
from hscmae.experiment import ExperimentConfig  # noqa: E402
from pipeline.demo import DemoConfig  # noqa: E402


@flow(name="demo", log_prints=True)
def demo(
    clips: int = DEMO_CLIPS,
    seconds: float = DEMO_SECONDS,
    visual_model: str = "resnet50",
    seeds: list[int] = DEMO_SEEDS,
    epochs: int | None = None,
    out: Path = DEFAULT_OUT,
    runs_root: str = "runs",
) -> TrainEvalOutcome:
    """Build features of ``clips`` demo videos with random extractor weights, then train and evaluate.

    Args:
        clips, seconds: how many demo clips, and how long each one is.
        visual_model: the frame extractor (``resnet50``, ``resnet152``, ``vit_b16``, ``vit_s16``).
        seeds, epochs: seeds of every method; ``epochs`` overrides the methods' epoch counts.
        out, runs_root: where the feature set and the run directory go.
    """
    features = build_features(
        demo_clips=clips, demo=DemoConfig(seconds=seconds), out=out,
        extract=ExtractConfig(visual_model=visual_model, audio_weights="random", visual_weights="random"))
    # methods x seeds on two single-threaded Dask worker processes: parallel, yet reproducible
    # (threads of one process would share torch's RNG; see flows.train_eval)
    parallel = train_eval.with_options(task_runner=task_runner("dask", workers=2))
    return parallel(ExperimentConfig(shards=str(features.shards), seeds=list(seeds), epochs=epochs,
                                     runs_root=runs_root))


def main(argv: list[str] | None = None) -> TrainEvalOutcome:
    args = parse_arguments(argv)
    outcome = demo(
        clips=args.clips, seconds=args.seconds, visual_model=args.visual_model, seeds=args.seeds,
        epochs=args.epochs, out=args.out, runs_root=args.runs_root)
    print(f"\n{outcome.table}\nRun directory: {outcome.run_dir}")
    return outcome


if __name__ == "__main__":
    main(sys.argv[1:])
