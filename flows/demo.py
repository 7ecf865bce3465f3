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

from extractors.registry import VISUAL_MODEL_NAMES
from flows.cli import add_verbose_argument, apply_verbosity
from pipeline.io.errors import add_debug_argument, user_errors
from pipeline.vocab import RANDOM_WEIGHTS

DEMO_CLIPS = 180  # 80 train, 40 val, 60 test
MIN_DEMO_CLIPS = 20  # the fewest with train, val and test clips of every class (pipeline.datasets.demo_videos splits by position)
DEMO_SECONDS = 5.0
DEMO_SEEDS = [0, 1, 2]
# 80 training clips: batches of 16 give 5 steps per epoch, 300 in all, so the val curve
# levels off well before the end and the val-selected epoch is not pinned to either edge
DEMO_BATCH_SIZE = 16
DEMO_EPOCHS = 60


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.demo",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--clips", type=int, default=DEMO_CLIPS, help="demo clips to generate")
    parser.add_argument("--seconds", type=float, default=DEMO_SECONDS, help="length of each demo clip")
    parser.add_argument("--visual-model", default="resnet50", choices=VISUAL_MODEL_NAMES, help="frame extractor")
    parser.add_argument("--seeds", nargs="+", type=int, default=DEMO_SEEDS)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="epochs of every trainable method")
    parser.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE, help="batch size of every trainable method")
    parser.add_argument("--out", type=Path, help="output root (default: $HSCMAE_OUTPUTS, else ./outputs)")
    parser.add_argument("--runs-root", default="runs", help="where the run directory goes, under the output root")
    add_verbose_argument(parser)
    add_debug_argument(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":  # --help and argument errors answer before numpy, torch and Prefect load
    ARGUMENTS = parse_arguments()

from typing import Annotated  # noqa: E402

from pydantic import Field  # noqa: E402

from hscmae.config import BatchSizeOverride, EpochsOverride, Seed  # noqa: E402

# the flow's bounded parameters, declared once: its signature (the run form) and check_arguments use them;
# the training budget is the experiment's override of every trainable method's (TrainConfig's bounds)
Clips = Annotated[int, Field(ge=MIN_DEMO_CLIPS, le=100_000)]
Seconds = Annotated[float, Field(gt=0.0, le=600.0)]
Seeds = Annotated[list[Seed], Field(min_length=1, max_length=100)]


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Values out of the flow's bounds: one ``error:`` line and exit 2 (light: no torch, no Prefect)."""
    from flows.checks import check_form

    with user_errors(args.debug):
        check_form("demo", {"clips": (Clips, args.clips), "seconds": (Seconds, args.seconds),
                            "seeds": (Seeds, args.seeds), "epochs": (EpochsOverride, args.epochs),
                            "batch_size": (BatchSizeOverride, args.batch_size)})
    return args


if __name__ == "__main__":  # bad values answer before torch and Prefect load
    CHECKED = check_arguments(ARGUMENTS)

from prefect import flow  # noqa: E402

from flows.build_features import build_features  # noqa: E402
from flows.cli import run_flow  # noqa: E402
from flows.common import output_root  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from flows.params import DemoSettings, ExtractSettings, VisualModel  # noqa: E402
from flows.train_eval import TrainEvalOutcome, train_eval  # noqa: E402
from hscmae.config import ExperimentConfig  # noqa: E402


@flow(name="demo", log_prints=True)
def demo(
    clips: Clips = DEMO_CLIPS,
    seconds: Seconds = DEMO_SECONDS,
    visual_model: VisualModel = "resnet50",
    seeds: Seeds = DEMO_SEEDS,
    epochs: EpochsOverride = DEMO_EPOCHS,
    batch_size: BatchSizeOverride = DEMO_BATCH_SIZE,
    out: Path | None = None,
    runs_root: str = "runs",
) -> TrainEvalOutcome:
    """Build features of ``clips`` demo videos with random extractor weights, then train and evaluate.

    Args:
        clips, seconds: how many demo clips, and how long each one is.
        visual_model: the frame extractor.
        seeds: seeds of every method.
        epochs, batch_size: the training budget of every trainable method (the demo's own, see above; empty:
            each method's own).
        out, runs_root: the output root (empty: ``$HSCMAE_OUTPUTS``, else ``./outputs``), and the runs under it.
    """
    out = output_root(out)
    built = build_features(
        demo_clips=clips, demo=DemoSettings(seconds=seconds), out=out, return_state=True,
        extract=ExtractSettings(visual_model=visual_model, audio_weights=RANDOM_WEIGHTS, visual_weights=RANDOM_WEIGHTS))
    if not built.is_completed():
        return built  # the demo ends as the build did (no clip extracted: Failed), with its message
    features = built.result()
    # methods x seeds on two single-threaded Dask worker processes: parallel, yet reproducible
    # (threads of one process would share torch's RNG; see flows.train_eval)
    parallel = train_eval.with_options(task_runner=task_runner("dask", workers=2))
    return parallel(ExperimentConfig(shards=str(features.shards), seeds=list(seeds), epochs=epochs,
                                     batch_size=batch_size, runs_root=str(out / runs_root), model_preset="demo"))


def main(argv: list[str] | None = None, *, checked: argparse.Namespace | None = None) -> TrainEvalOutcome:
    """The command line: ``argv`` parsed and checked, or ``checked`` when ``__main__`` has done that already."""
    args = checked or check_arguments(parse_arguments(argv))
    apply_verbosity(args)
    parameters = dict(clips=args.clips, seconds=args.seconds, visual_model=args.visual_model, seeds=args.seeds,
                      epochs=args.epochs, batch_size=args.batch_size, out=args.out, runs_root=args.runs_root)
    outcome = run_flow(demo, parameters, debug=args.debug)
    # train-eval has logged the table and the run directory
    print(f"Retrieval page: {(outcome.run_dir / 'retrieval.html').resolve()}")
    return outcome


if __name__ == "__main__":
    from flows.demo import main as module_main  # the importable module's copy, as the other flows do

    module_main(checked=CHECKED)
