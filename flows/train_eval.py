"""``train-eval``: feature shards -> HSC-MAE, its ablations and the baselines over seeds -> results.

    python -m flows.train_eval                                   # built-in synthetic set
    python -m flows.train_eval --config experiment.yaml --features outputs/features/<key>/shards --epochs 5

Its run form is ``hscmae.config.ExperimentConfig``. The flow picks the data and the method x seed jobs, submits one
cached task per job (``hscmae.experiment.run_one``) and reports: a results table that fills in, then the table and
links to the run folder. No server needed (embedded mode without ``PREFECT_API_URL``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli import add_runner_arguments, check_runner_arguments
from pipeline.io.errors import add_debug_argument, user_errors


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.train_eval",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--features", type=Path,
                        help="feature shards (a folder or file); default: the built-in synthetic set")
    parser.add_argument("--config", type=Path, help="experiment config, JSON or YAML: hscmae.config.ExperimentConfig "
                                                    "fields (method_configs: per method, model/loss/train fields)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--methods", nargs="+", help="methods to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, help="override every trainable method's most epochs")
    parser.add_argument("--patience", type=int, help="override every trainable method's early-stopping patience "
                                                     "(epochs without a better val mAP; >= epochs: never stop early)")
    parser.add_argument("--out", type=Path, help="output root (default: $HSCMAE_OUTPUTS, else ./outputs)")
    parser.add_argument("--runs-root", help="where run directories go (default: runs, under the output root)")
    parser.add_argument("--keep-resume-state", action="store_true",
                        help="keep each finished method x seed's resume state (default: best checkpoint only)")
    add_runner_arguments(parser, threads=1)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Bad paths, values or config keys: one ``error:`` line and exit 2 (light: no torch, no Prefect); adds
    ``args.experiment``: the config file with the flags on top, checked by :func:`hscmae.config.load_config`."""
    from flows.checks import check_train_eval
    from hscmae.config import load_config

    with user_errors(args.debug):
        check_runner_arguments(args)
        check_train_eval(args.features, args.config)
        args.experiment = load_config(args.config, {
            "shards": str(args.features) if args.features else None, "methods": args.methods, "seeds": args.seeds,
            "epochs": args.epochs, "patience": args.patience, "runs_root": args.runs_root})
    return args


if __name__ == "__main__":  # --help, argument errors and bad input answer before torch and Prefect load
    CHECKED = check_arguments(parse_arguments())

from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectFuture, as_completed  # noqa: E402

from flows.cli import apply_verbosity, check_flow_parameters, run_flow, runner_from_arguments  # noqa: E402
from flows.common import file_url, key_of, link_dir, link_files, output_root, results_dir  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from flows.progress import Progress  # noqa: E402
from hscmae.config import ExperimentConfig  # noqa: E402
from hscmae.experiment import (TRAIN_CODE, MethodResult, PreparedData, data_key, epoch_logger,  # noqa: E402
                               feature_source, prepare, progress_text, run_folder, run_one, summarise)
from pipeline.io.digest import digest, source_digest  # noqa: E402


@dataclass(frozen=True)
class RunJob:
    """One method x seed of an experiment; ``key`` is its cache key."""

    key: str
    method: str
    seed: int
    run_dir: Path
    config: ExperimentConfig


@dataclass
class TrainEvalOutcome:
    """The flow's result: the run directory and its Markdown results table."""

    run_dir: Path
    table: str
    task_states: dict[str, int]


# the library's stage functions as tasks: the built-in set (generated once, then found on disk), the data
synthetic_data = task(feature_source, name="synthetic-data", task_run_name="synthetic-data", cache_policy=NO_CACHE,
                      persist_result=False)
prepare_data = task(prepare, name="prepare-data", task_run_name="prepare-data", cache_policy=NO_CACHE,
                    persist_result=False)


@task(name="train-eval-method", task_run_name="{job.method}-seed{job.seed}", cache_policy=key_of("job"),
      persist_result=True)
def train_method(job: RunJob, data: PreparedData, keep_resume_state: bool) -> MethodResult:
    """Train (or solve) one method with one seed, select on val, evaluate on test once; log its epochs."""
    log_epoch = epoch_logger(get_run_logger().info, job.method, job.seed, job.config.method_config(job.method).train)
    return run_one(job.method, job.seed, data, job.run_dir, config=job.config, progress=False, on_epoch=log_epoch,
                   keep_resume_state=keep_resume_state)


@task(name="summarise", task_run_name="summarise", cache_policy=key_of("key"), persist_result=True)
def summarise_run(key: str, results: list[MethodResult], data: PreparedData, config: ExperimentConfig,
                  run_dir: Path) -> Path:
    """Write config, metrics, tables, plots and log into the run directory."""
    return summarise(results, data, config, run_dir)


def watch_runs(futures: list[PrefectFuture[MethodResult]]) -> None:
    """As method x seed runs finish, one progress artifact moves in place (counts, best on val so far); then one
    table of every finished run (a table per run would bury the results under one card each)."""
    total, finished, failed = len(futures), [], 0
    with Progress(total, key="train-eval-progress", text=f"0 of {total} method x seed done", unit="run") as progress:
        for future in as_completed(futures):
            if future.state.is_failed():
                failed += 1  # done, though failed: the flow raises on it after every run has finished
            else:
                finished.append(future.result())
            progress.update(len(finished) + failed, progress_text(finished, failed, total))
    create_table_artifact([r.row() for r in finished], key="train-eval-finished", description=(
        f"finished method x seed runs ({len(finished)} of {total}); test metrics of the model selected on val"))


def method_key(config: ExperimentConfig, data: str, method: str, seed: int, run_dir: Path) -> str:
    """Hash of what decides one method x seed: data, method config, seed, evaluation settings, code, run dir."""
    return digest("train-eval-method", data, config.method_config(method).to_dict(), seed, config.val_fraction,
                  config.split_seed, config.posthoc_cca, source_digest(*TRAIN_CODE), str(run_dir.resolve()))


# One task at a time by default: training seeds torch's process-wide RNG (initialisation, dropout),
# so two fits in threads of one process would draw from each other's stream. Dask workers are
# separate single-threaded processes, so there tasks run in parallel and stay reproducible.
@flow(name="train-eval", log_prints=True, task_runner=task_runner("thread", threads=1))
def train_eval(config: ExperimentConfig = ExperimentConfig(), out: Path | None = None,
               keep_resume_state: bool = False) -> TrainEvalOutcome:
    """Train and evaluate every method x seed of the experiment ``config`` and write its run directory.

    Args:
        out: the output root that relative folders of ``config`` are under (empty: ``$HSCMAE_OUTPUTS``, else ./outputs).
        keep_resume_state: keep each finished method x seed's last resume state beside its best model.
    """
    config = config.under(output_root(out))
    if config.shards is None:
        config = config.with_shards(synthetic_data(config))
    data_digest = data_key(config.shards)
    run_dir, storage = run_folder(config, data_digest), results_dir(config.runs_root)
    data = prepare_data.submit(config)
    data.wait()
    if data.state.is_failed():  # its own error, not "Run is in PENDING state" from every training task
        data.result()
    jobs = [RunJob(key=method_key(config, data_digest, method, seed, run_dir), method=method, seed=seed,
                   run_dir=run_dir, config=config) for method in config.methods for seed in config.seeds]
    futures = [train_method.with_options(result_storage=storage).submit(job, data, keep_resume_state) for job in jobs]
    watch_runs(futures)
    results = [f.result() for f in futures]
    summary_key = digest("summarise", [job.key for job in jobs], str(run_dir.resolve()))
    summarise_run.with_options(result_storage=storage)(summary_key, results, data, config, run_dir)
    table = (run_dir / "results.md").read_text()
    create_markdown_artifact(f"## Results\n\n{table}\nRun directory: `{run_dir}`\n\n"
                             f"[Retrieved clips and embedding map]({file_url(run_dir / 'retrieval.html')})",
                             key="train-eval-results", description="retrieval mAP on test, mean ± std over seeds")
    link_files(sorted((run_dir / "plots").glob("*.png")) + [run_dir / name for name in (
        "results.md", "results.csv", "metrics.json", "log.jsonl")], key="train-eval-files", title="Plots and tables")
    link_dir(run_dir, key="train-eval-run", text=f"run directory {run_dir.name}")
    states = dict(Counter(future.state.name for future in futures))
    print(f"run directory {run_dir}; method x seed tasks {states}\n\n{table}")
    return TrainEvalOutcome(run_dir=run_dir, table=table, task_states=states)


def main(argv: list[str] | None = None, *, checked: argparse.Namespace | None = None) -> TrainEvalOutcome:
    """The command line: ``argv`` parsed and checked, or ``checked`` when ``__main__`` has done that already."""
    args = checked or check_arguments(parse_arguments(argv))
    apply_verbosity(args)
    if args.print_config:
        print(yaml.safe_dump(args.experiment.resolved(), sort_keys=False), end="")
        raise SystemExit(0)
    parameters = dict(config=args.experiment, out=args.out, keep_resume_state=args.keep_resume_state)
    check_flow_parameters(train_eval, parameters, where=args.config, debug=args.debug)
    return run_flow(train_eval.with_options(task_runner=runner_from_arguments(args)), parameters, debug=args.debug)


if __name__ == "__main__":
    # run the importable module's copy, so Dask workers can unpickle its tasks by reference
    from flows.train_eval import main as module_main

    module_main(checked=CHECKED)
