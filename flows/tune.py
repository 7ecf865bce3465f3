"""``tune``: every method's settings tuned on val with Optuna, the same number of trials each -> ``tuned.yaml``.

    python -m flows.tune --trials 20                        # built-in synthetic set, every method
    python -m flows.tune --methods clip linear-cca --trials 3 --epochs 2
    python -m flows.train_eval --config outputs/tune/<key>/tuned.yaml   # then: the tuned configs over seeds

One Prefect task per trial (``hscmae.tuning.run_trial``): it draws settings from the method's search
space (seeded TPE), trains on train, reports each epoch's val mAP to a median pruner and returns the
best val mAP. Test is never loaded. The studies live in Optuna's database storage (a SQLite file
under the output root by default, ``--storage`` for a database URL a cluster shares), so a killed
tune continues where it stopped. Writes ``<out>/tune/<key>/tuned.yaml``, the studies' plots, and a
best-so-far table that fills in as trials finish.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import Annotated

from pydantic import Field

from flows.cli import add_runner_arguments, check_runner_arguments
from hscmae.config import Seed
from pipeline.io.errors import add_debug_argument, user_errors

# the flow's bounded parameters, declared once: its signature (the run form) and check_arguments use them
Trials = Annotated[int, Field(ge=1, le=10_000, description="finished trials per method (completed or pruned), "
                                                           "the same budget for every method")]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.tune",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--features", type=Path,
                        help="feature shards (a folder or file); default: the built-in synthetic set")
    parser.add_argument("--config", type=Path, help="experiment config (JSON/YAML) whose methods are tuned")
    parser.add_argument("--methods", nargs="+", help="methods to tune (default: all)")
    parser.add_argument("--trials", type=int, default=20, help="trials per method, the same for every method")
    parser.add_argument("--epochs", type=int, help="most epochs of each trial (default: each method's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samplers")
    parser.add_argument("--storage", help="Optuna database URL (default: sqlite under <out>/tune/)")
    parser.add_argument("--out", type=Path, help="output root (default: $HSCMAE_OUTPUTS, else ./outputs)")
    add_runner_arguments(parser, threads=1)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Bad paths, values or config keys: one ``error:`` line and exit 2 (light: no torch, no Prefect)."""
    from flows.checks import check_form, check_train_eval
    from hscmae.config import load_config

    with user_errors(args.debug):
        check_runner_arguments(args)
        check_form("tune", {"trials": (Trials, args.trials), "seed": (Seed, args.seed)})
        check_train_eval(args.features, args.config)
        args.experiment = load_config(args.config, {
            "shards": str(args.features) if args.features else None, "methods": args.methods,
            "epochs": args.epochs})
    return args


if __name__ == "__main__":  # --help, argument errors and bad input answer before torch and Prefect load
    CHECKED = check_arguments(parse_arguments())

import functools  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import optuna  # noqa: E402
import yaml  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402

from flows.cli import apply_verbosity, check_flow_parameters, run_flow, runner_from_arguments  # noqa: E402
from flows.common import link_files, output_root  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from flows.progress import Progress  # noqa: E402
from hscmae import tuning  # noqa: E402
from hscmae.config import ExperimentConfig  # noqa: E402
from hscmae.synthetic import write_synthetic  # noqa: E402
from pipeline.features.shards import shard_paths  # noqa: E402
from pipeline.io.atomic import atomic_path  # noqa: E402
from pipeline.io.digest import digest, files_digest, short, source_digest  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial; the flow's own lines say what ran

TUNE_CODE = ("hscmae", "pipeline.features.shards", "pipeline.datasets.splits")


@dataclass
class TuneOutcome:
    """The flow's result: ``tuned.yaml``, the storage URL and each method's best val mAP."""

    tuned: Path
    storage: str
    best: dict[str, float]


@functools.lru_cache(maxsize=2)
def clips(shards: str, val_fraction: float, split_seed: int) -> tuning.TuneData:
    """Train and val clips (val carved as ``train-eval`` carves it; test dropped unread), read once per process:
    every trial task of a Dask worker shares them instead of each carrying its own serialised copy."""
    return tuning.prepare_train_val(ExperimentConfig(shards=shards, val_fraction=val_fraction, split_seed=split_seed))


@task(name="tune-trial", task_run_name="{method}-trial", cache_policy=NO_CACHE, persist_result=False)
def trial_task(url: str, study: str, method: str, config: ExperimentConfig, trials: int, seed: int) -> int:
    """One trial of ``method``'s study; returns its number."""
    data = clips(config.shards, config.val_fraction, config.split_seed)
    loaded = tuning.load_study(url, study, trials=trials, seed=seed)
    return tuning.run_trial(loaded, config.method_config(method), data.train, data.val)


@flow(name="tune", log_prints=True, task_runner=task_runner("thread", threads=1))
def tune(config: ExperimentConfig = ExperimentConfig(), trials: Trials = 20, seed: Seed = 0,
         storage: str | None = None, out: Path | None = None) -> TuneOutcome:
    """Tune every method of ``config`` on val with ``trials`` trials each; write ``tuned.yaml``.

    Args:
        config: the experiment whose methods are tuned (its ``epochs`` caps every trial).
        trials: finished trials per method (completed or pruned), the same budget for every method.
        seed: seed of the TPE samplers.
        storage: Optuna database URL; empty: ``sqlite:///<out>/tune/studies.db``.
        out: the output root (empty: ``$HSCMAE_OUTPUTS``, else ``./outputs``).
    """
    root = output_root(out)
    config = config.under(root)
    if config.shards is None:
        config = config.with_shards(write_synthetic(config.synthetic, config.data_root))
    data_key = files_digest(shard_paths(config.shards))
    # the budget is not part of a study's identity: asking for more trials later continues the same studies
    key = short(digest("tune", data_key, config.val_fraction, config.split_seed, seed,
                       {m: config.method_config(m).to_dict() for m in config.methods}, source_digest(*TUNE_CODE)))
    folder = root / "tune" / key
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{root / 'tune' / 'studies.db'}"
    names = {m: f"{m}-{key}" for m in config.methods}
    clips(config.shards, config.val_fraction, config.split_seed)  # bad shards fail here, before any trial
    studies = {m: tuning.load_study(url, names[m], trials=trials, seed=seed) for m in config.methods}
    remaining = {m: max(0, trials - len(tuning.finished(s))) for m, s in studies.items()}
    total = trials * len(studies)
    futures = [trial_task.submit(url, names[m], m, config, trials, seed)
               for m in config.methods for _ in range(remaining[m])]
    with Progress(total, key="tune-progress", text=f"{total - len(futures)} of {total} trials done",
                  unit="trial") as progress:
        for done, _ in enumerate(as_completed(futures), start=total - len(futures) + 1):
            progress.update(done, f"{done} of {total} trials done ({trials} per method)")
            create_table_artifact(tuning.trials_table(studies), key="tune-best",
                                  description=f"best val mAP so far per method ({trials} trials each)")
    failed = [f for f in futures if f.state.is_failed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(futures)} trials failed; run again to retry them "
                           f"(the study keeps every finished trial)")
    tuned = tuning.tuned_config(config, studies, trials=trials, storage_url=url)
    with atomic_path(folder / "tuned.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(tuned, sort_keys=False))
    plots = [p for s in studies.values() for p in tuning.plot_study(s, folder / "plots")]
    link_files(plots + [folder / "tuned.yaml"], key="tune-files", title="Tuned config and study plots")
    best = {m: s.best_value for m, s in studies.items()}
    print(f"tuned config {folder / 'tuned.yaml'} ({trials} trials per method; storage {url})")
    for row in tuning.trials_table(studies):
        print(f"  {row['method']}: best val mAP {row['best val mAP']} ({row['best settings']})")
    return TuneOutcome(tuned=folder / "tuned.yaml", storage=url, best=best)


def main(argv: list[str] | None = None, *, checked: argparse.Namespace | None = None) -> TuneOutcome:
    """The command line: ``argv`` parsed and checked, or ``checked`` when ``__main__`` has done that already."""
    args = checked or check_arguments(parse_arguments(argv))
    apply_verbosity(args)
    parameters = dict(config=args.experiment, trials=args.trials, seed=args.seed, storage=args.storage,
                      out=args.out)
    check_flow_parameters(tune, parameters, where=args.config, debug=args.debug)
    return run_flow(tune.with_options(task_runner=runner_from_arguments(args)), parameters, debug=args.debug)


if __name__ == "__main__":
    # run the importable module's copy, so Dask workers can unpickle its tasks by reference
    from flows.tune import main as module_main

    module_main(checked=CHECKED)
