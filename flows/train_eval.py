"""``train-eval``: feature shards -> HSC-MAE, its ablations and the baselines over seeds -> results.

    python -m flows.train_eval                                   # built-in synthetic set
    python -m flows.train_eval --features outputs/features/<key>/shards
    python -m flows.train_eval --config experiment.yaml --seeds 0 1 --epochs 5

Runs in Prefect's embedded mode when no ``PREFECT_API_URL`` is set: no server needed.
One task per method x seed (``hscmae.experiment.run_one``); each one's cache key hashes the
shards' bytes, the resolved method config, the seed, the evaluation settings and the source
of ``hscmae``, plus, by design, the run directory its checkpoint goes to (so do the summary's
key; the built-in synthetic set's key holds its resolved data folder). The run lands in
``<runs_root>/run-<hash>/`` (config, metrics, checkpoints, results.md/.csv, plots, log);
the results table and links to the plots are artifacts of the flow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.common import add_runner_arguments
from pipeline.io.errors import add_debug_argument, user_errors


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's flags (light: runs before the heavy imports below, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.train_eval",
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--features", type=Path,
                        help="feature shards (a folder or file); default: the built-in synthetic set")
    parser.add_argument("--config", type=Path,
                        help="experiment config, JSON or YAML: ExperimentConfig fields, including model (ModelConfig "
                             "fields) and method_configs (per method: model/loss/train fields)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--methods", nargs="+", help="methods to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, help="override every trainable method's epochs")
    parser.add_argument("--out", type=Path, help="output root (default: $HSCMAE_OUTPUTS, else ./outputs)")
    parser.add_argument("--runs-root", help="where run directories go (default: runs, under the output root)")
    parser.add_argument("--keep-resume-state", action="store_true",
                        help="keep each finished method x seed's resume state (default: best checkpoint only)")
    add_runner_arguments(parser, threads=1)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Bad paths, values or config keys: one ``error:`` line and exit 2 (light: no torch, no Prefect).

    Adds ``args.experiment``: the config file with the flags on top, every key checked.
    """
    from hscmae.config import load_config
    from flows.checks import check_train_eval

    with user_errors(args.debug):
        check_train_eval(args.features, args.config, seeds=args.seeds, epochs=args.epochs)
        args.experiment = load_config(args.config, {
            "shards": str(args.features) if args.features else None, "methods": args.methods, "seeds": args.seeds,
            "epochs": args.epochs, "runs_root": args.runs_root})
    return args


if __name__ == "__main__":  # --help, argument errors and bad input answer before torch and Prefect load
    CHECKED = check_arguments(parse_arguments())

import dataclasses  # noqa: E402
import shutil  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectFuture, as_completed  # noqa: E402
from pydantic.json_schema import SkipJsonSchema  # noqa: E402

from flows.params import ExperimentSettings  # noqa: E402
from flows.progress import Progress  # noqa: E402
from flows.common import (apply_verbosity, check_flow_parameters, digest, file_url, files_digest, key_of, link_dir, link_files,  # noqa: E402
                          output_root, results_dir, runner_from_arguments, short, source_digest, task_runner)
from hscmae.checkpoint import EPOCH_DIR, LAST  # noqa: E402
from hscmae.experiment import ExperimentConfig, MethodResult, PreparedData, prepare, run_one, summarise  # noqa: E402
from hscmae.synthetic import SyntheticConfig, write_synthetic  # noqa: E402
from pipeline.features.shards import shard_paths  # noqa: E402

EPOCH_LINES = 10  # most per-epoch log lines of one method x seed
TRAIN_CODE = ("hscmae", "pipeline.features.shards", "pipeline.datasets.splits")
SYNTHETIC_CODE = ("hscmae.synthetic",)


@dataclass(frozen=True)
class RunJob:
    """One method x seed of an experiment; ``key`` is its cache key."""

    key: str
    method: str
    seed: int
    run_dir: Path
    config: ExperimentConfig
    keep_resume_state: bool = False


@dataclass
class TrainEvalOutcome:
    """The flow's result: the run directory and its Markdown results table."""

    run_dir: Path
    table: str
    task_states: dict[str, int]


@task(name="synthetic-data", task_run_name="synthetic-data", cache_policy=key_of("key"), persist_result=True)
def synthetic_data(key: str, config: SyntheticConfig, root: Path) -> Path:
    """Generate the built-in feature set (once; later runs find it on disk)."""
    return write_synthetic(config, root)


@task(name="prepare-data", task_run_name="prepare-data", cache_policy=NO_CACHE, persist_result=False)
def prepare_data(config: ExperimentConfig) -> PreparedData:
    """Load the shards, carve val from train if absent, pad each split."""
    return prepare(config)


@task(name="train-eval-method", task_run_name="{job.method}-seed{job.seed}", cache_policy=key_of("job"),
      persist_result=True)
def train_method(job: RunJob, data: PreparedData) -> MethodResult:
    """Train (or solve) one method with one seed, select on val, evaluate on test once.

    Logs epochs as they finish: every epoch up to :data:`EPOCH_LINES` of them, else every k-th
    (and the last), so a 40-epoch run says how it goes in 10 lines rather than 40.
    """
    logger, epochs = get_run_logger(), job.config.method_config(job.method).train.epochs
    every = -(-epochs // EPOCH_LINES)

    def log_epoch(entry: dict[str, Any]) -> None:
        done = entry["epoch"] + 1
        if done % every == 0 or done == epochs:
            logger.info("%s seed %d: epoch %d/%d, loss %.4f, val mAP %.4f", job.method, job.seed, done, epochs,
                        entry.get("total", float("nan")), entry["val_score"])

    result = run_one(job.method, job.seed, data, job.run_dir, config=job.config, progress=False, on_epoch=log_epoch)
    if not job.keep_resume_state:
        drop_resume_state(Path(result.checkpoint).parent)
    return result


def drop_resume_state(folder: Path) -> None:
    """Remove a finished run's resume state (``last.json`` first, then ``epoch_NNNN/``); keep its best model."""
    (folder / LAST).unlink(missing_ok=True)
    for old in folder.iterdir():
        if old.is_dir() and EPOCH_DIR.match(old.name):
            shutil.rmtree(old)


@task(name="summarise", task_run_name="summarise", cache_policy=key_of("key"), persist_result=True)
def summarise_run(key: str, results: list[MethodResult], data: PreparedData, config: ExperimentConfig,
                  run_dir: Path) -> Path:
    """Write config, metrics, tables, plots and log into the run directory."""
    return summarise(results, data, config, run_dir)


def finished_row(result: MethodResult) -> dict[str, Any]:
    """One finished method x seed as a row of the filling-in results table (val selects, test reports)."""
    return {"method": result.method, "seed": result.seed, "selected epoch": result.best_epoch,
            "val mAP": round(result.val_score, 4),
            **{f"test {name}": round(value, 4) for name, value in result.metrics.items()},
            "seconds": round(result.seconds, 1)}


def watch_runs(futures: list[PrefectFuture[MethodResult]]) -> None:
    """As method x seed runs finish: a progress artifact, a results table that fills in, a terminal bar."""
    total = len(futures)
    finished: list[MethodResult] = []
    failed = 0
    with Progress(total, key="train-eval-progress", text=f"0 of {total} method x seed done",
                  unit="run") as progress:
        for future in as_completed(futures):
            if future.state.is_failed():
                failed += 1  # done, though failed: the flow raises on it after every run has finished
            else:
                finished.append(future.result())
            done = len(finished) + failed
            text = f"{done} of {total} method x seed done"
            if failed:
                text += f" ({failed} failed)"
            if finished:
                best = max(finished, key=lambda r: r.val_score)
                text += f"; best on val so far: {best.method} seed {best.seed} (val mAP {best.val_score:.4f})"
            progress.update(done, text)
            if not future.state.is_failed():
                create_table_artifact([finished_row(r) for r in finished], key="train-eval-finished",
                                      description=f"finished method x seed runs ({len(finished)} of {total}); "
                                                  "test metrics of the epoch selected on val")


def experiment_key(config: ExperimentConfig, data_key: str) -> str:
    """Hash of what decides the whole run: the data's bytes, the settings, the code (not path strings)."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("shards", "synthetic", "data_root", "runs_root", "run_dir")}
    return digest("train-eval", data_key, settings, source_digest(*TRAIN_CODE))


def method_key(config: ExperimentConfig, data_key: str, method: str, seed: int, run_dir: Path) -> str:
    """Hash of what decides one method x seed: data, method config, seed, evaluation settings, code, run dir."""
    return digest("train-eval-method", data_key, config.method_config(method).to_dict(), seed,
                  config.val_fraction, config.split_seed, config.posthoc_cca, source_digest(*TRAIN_CODE),
                  str(run_dir.resolve()))


# One task at a time by default: training seeds torch's process-wide RNG (initialisation, dropout),
# so two fits in threads of one process would draw from each other's stream. Dask workers are
# separate single-threaded processes, so there tasks run in parallel and stay reproducible.
@flow(name="train-eval", log_prints=True, task_runner=task_runner("thread", threads=1))
def train_eval(config: ExperimentSettings = ExperimentSettings(), out: Path | SkipJsonSchema[None] = None,
               keep_resume_state: bool = False) -> TrainEvalOutcome:
    """Train and evaluate every method x seed of ``config`` and write the run directory.

    Args:
        config: the experiment (``hscmae.experiment.ExperimentConfig``): shards (empty: the built-in
            synthetic set), methods, seeds, val carving, post-hoc CCA, epochs override, run folder.
        out: the output root that relative folders of ``config`` are under (empty: ``$HSCMAE_OUTPUTS``,
            else ``./outputs``).
        keep_resume_state: keep each finished method x seed's last resume state beside its best model.
    """
    config = config.to_config(output_root(out))
    runs_root = Path(config.runs_root).resolve()
    if config.shards is None:
        data_root = Path(config.data_root).resolve()
        # the cached result is a path under data_root, so the key holds it: a moved output root regenerates
        synthetic_key = digest("synthetic", config.synthetic, source_digest(*SYNTHETIC_CODE), str(data_root))
        source = synthetic_data.with_options(result_storage=results_dir(data_root))(
            synthetic_key, config.synthetic, data_root)
        config = dataclasses.replace(config, shards=str(source))
    data_key = files_digest(shard_paths(config.shards))
    key = experiment_key(config, data_key)
    run_dir = Path(config.run_dir) if config.run_dir is not None else runs_root / f"run-{short(key)}"
    storage = results_dir(runs_root)

    data = prepare_data.submit(config)
    jobs = [RunJob(key=method_key(config, data_key, method, seed, run_dir), method=method, seed=seed,
                   run_dir=run_dir, config=config, keep_resume_state=keep_resume_state)
            for method in config.methods for seed in config.seeds]
    futures = [train_method.with_options(result_storage=storage).submit(job, data) for job in jobs]
    watch_runs(futures)
    results = [f.result() for f in futures]
    summary_key = digest("summarise", [job.key for job in jobs], str(run_dir.resolve()))
    summarise_run.with_options(result_storage=storage)(summary_key, results, data, config, run_dir)

    table = (run_dir / "results.md").read_text()
    create_markdown_artifact(f"## Results\n\n{table}\nRun directory: `{run_dir}`\n\n"
                             f"[Retrieved clips and embedding map]({file_url(run_dir / 'retrieval.html')})",
                             key="train-eval-results",
                             description="retrieval mAP on test, mean ± std over seeds")
    link_files(sorted((run_dir / "plots").glob("*.png")) + [run_dir / "results.md", run_dir / "results.csv",
                                                          run_dir / "metrics.json", run_dir / "log.jsonl"],
               key="train-eval-files", title="Plots and tables")
    link_dir(run_dir, key="train-eval-run", text=f"run directory {run_dir.name}")
    states: dict[str, int] = {}
    for future in futures:
        states[future.state.name] = states.get(future.state.name, 0) + 1
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
    run = train_eval.with_options(task_runner=runner_from_arguments(args))
    return run(**{**parameters, "config": ExperimentSettings.model_validate(args.experiment)})


if __name__ == "__main__":
    # run the importable module's copy, so Dask workers can unpickle its tasks by reference
    from flows.train_eval import main as module_main

    module_main(checked=CHECKED)
