"""The whole path on a fresh machine: demo videos -> ``build-features`` -> ``train-eval`` -> table.

    python -m flows.demo                  # what `make demo` runs
    python -m flows.demo --clips 200 --seeds 0 1 2 3 4

No pretrained weights exist on a fresh machine, so the extractors run with random weights
(seeded, so every run gives the same features) and every table says so. The numbers show
that the path works end to end, not how well the method does on real data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from extractors.extract import ExtractConfig
from flows.build_features import DEFAULT_OUT, build_features
from flows.common import task_runner
from flows.train_eval import TrainEvalOutcome, train_eval
from hscmae.experiment import ExperimentConfig
from pipeline.demo import DemoConfig
from pipeline.errors import add_debug_argument, user_errors
from pipeline.inputs import check_demo

DEMO_CLIPS = 180  # 80 train, 40 val, 60 test
DEMO_SECONDS = 5.0
DEMO_SEEDS = [0, 1, 2]
# 80 training clips: batches of 16 give 5 steps per epoch, 300 in all, so the val curve
# levels off well before the end and the val-selected epoch is not pinned to either edge
DEMO_BATCH_SIZE = 16
DEMO_EPOCHS = 60


@flow(name="demo", log_prints=True)
def demo(
    clips: int = DEMO_CLIPS,
    seconds: float = DEMO_SECONDS,
    visual_model: str = "resnet50",
    seeds: list[int] = DEMO_SEEDS,
    epochs: int = DEMO_EPOCHS,
    batch_size: int = DEMO_BATCH_SIZE,
    out: Path = DEFAULT_OUT,
    runs_root: str = "runs",
) -> TrainEvalOutcome:
    """Build features of ``clips`` demo videos with random extractor weights, then train and evaluate.

    Args:
        clips, seconds: how many demo clips, and how long each one is.
        visual_model: the frame extractor (``resnet50``, ``resnet152``, ``vit_b16``, ``vit_s16``).
        seeds: seeds of every method.
        epochs, batch_size: the training budget of every trainable method (the demo's own, see above).
        out, runs_root: where the feature set and the run directory go.
    """
    features = build_features(
        demo_clips=clips, demo=DemoConfig(seconds=seconds), out=out,
        extract=ExtractConfig(visual_model=visual_model, audio_weights="random", visual_weights="random"))
    # methods x seeds on two single-threaded Dask worker processes: parallel, yet reproducible
    # (threads of one process would share torch's RNG; see flows.train_eval)
    parallel = train_eval.with_options(task_runner=task_runner("dask", workers=2))
    return parallel(ExperimentConfig(shards=str(features.shards), seeds=list(seeds), epochs=epochs,
                                     batch_size=batch_size, runs_root=runs_root, model_preset="demo"))


def main(argv: list[str] | None = None) -> TrainEvalOutcome:
    parser = argparse.ArgumentParser(prog="python -m flows.demo",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--clips", type=int, default=DEMO_CLIPS, help="demo clips to generate")
    parser.add_argument("--seconds", type=float, default=DEMO_SECONDS, help="length of each demo clip")
    parser.add_argument("--visual-model", default="resnet50", help="resnet50, resnet152, vit_b16, vit_s16")
    parser.add_argument("--seeds", nargs="+", type=int, default=DEMO_SEEDS)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="epochs of every trainable method")
    parser.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE, help="batch size of every trainable method")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root of build-features")
    parser.add_argument("--runs-root", default="runs", help="where the run directory goes")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    with user_errors(args.debug):
        check_demo(args.clips, args.seconds, args.seeds, args.epochs)
    outcome = demo(
        clips=args.clips, seconds=args.seconds, visual_model=args.visual_model, seeds=args.seeds,
        epochs=args.epochs, batch_size=args.batch_size, out=args.out, runs_root=args.runs_root)
    print(f"\n{outcome.table}\nRun directory: {outcome.run_dir}")
    print(f"Retrieval page: {(outcome.run_dir / 'retrieval.html').resolve()}")
    return outcome


if __name__ == "__main__":
    from flows.demo import main as module_main  # the importable module's copy, as the other flows do

    module_main()
