"""The experiment: every method x every seed on one feature set, then tables and plots.

Plain Python in units a flow can map as tasks: :func:`feature_source` (the shards; the built-in set
is generated once), :func:`prepare` (once), :func:`run_one` (per method and seed), :func:`summarise`
(once); :func:`run_experiment` chains them into the folder :func:`run_folder` names.

Selection never sees test: a trainable method keeps the epoch with the best mean mAP on val
(training stops early after ``patience`` epochs without a better one), linear CCA (baseline and
post-hoc) the ridge with the best mean mAP on val (the baseline's own, when its ``cca_ridge`` is
set); test is embedded and scored once, on the selected model. Epochs are counted from 1.
The run directory holds ``config.json``, ``metrics.json``, ``results.md``, ``results.csv``,
``plots/*.png``, ``log.jsonl`` and ``checkpoints/<method>-seed<s>/`` (``best.safetensors`` is the
selected model, ``posthoc_cca.safetensors`` its post-hoc CCA), ``diagnostics.jsonl`` and
``plots/diagnostics.png``.

Every row's ``+CCA`` columns are the same procedure (:func:`hscmae.evaluate.select_cca`: one linear
CCA, fit on train, ridge chosen on val) applied to that method's representation; for ``linear-cca``
the representation is the raw pooled features, so its plain and ``+CCA`` columns coincide.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hscmae import diagnostics
from hscmae.cca import LinearCCA
from hscmae.checkpoint import BEST, POSTHOC_CCA, checkpoint_dir, drop_resume_state
from hscmae.config import ExperimentConfig, TrainConfig
from hscmae.data import ClipArrays
from hscmae.evaluate import (POSTHOC_PREFIX, candidate_ridges, evaluate, evaluate_partial, retrieval_score,
                             select_cca)
from hscmae.inference import embed
from hscmae.report import aggregate, data_info, markdown_table, plot_losses, plot_pr_curves, write_csv
from hscmae.retrieval_page import shown_run, write_retrieval_page
from hscmae.synthetic import write_synthetic
from hscmae.train import fit, stops
from pipeline.datasets.splits import carve_val
from pipeline.features.shards import load_feature_set, shard_paths
from pipeline.io.atomic import atomic_path
from pipeline.io.digest import digest, files_digest, short, source_digest
from pipeline.vocab import MODALITIES, SPLITS


TRAIN_CODE = ("hscmae", "pipeline.features.shards", "pipeline.datasets.splits")  # the code a run's numbers follow
PLACES = ("shards", "synthetic", "data_root", "runs_root", "run_dir")  # where a run reads and writes, not its settings


@dataclass
class PreparedData:
    """Clips of each split and what the tables say about them."""

    train: ClipArrays
    val: ClipArrays
    test: ClipArrays
    info: dict[str, Any]


@dataclass
class MethodResult:
    """One method x seed: test metrics of the selected model, its training history and checkpoint.

    A trainable method: ``best_epoch`` is the epoch selected on val and ``stopped_epoch`` the last one
    trained (both from 1, ``history[best_epoch - 1]`` its entry); a closed-form one (linear CCA):
    ``cca_ridge`` is the ridge selected on val (``history``: one entry per ridge tried).
    ``posthoc_ridge`` is the ridge of a trainable method's post-hoc CCA (``None`` without one).
    """

    method: str
    kind: str
    seed: int
    best_epoch: int | None
    stopped_epoch: int | None
    cca_ridge: float | None
    val_score: float
    metrics: dict[str, float]
    curves: dict[str, dict[str, list[float]]]
    history: list[dict[str, Any]]
    checkpoint: str
    posthoc_ridge: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def selection(self) -> str:
        """What val selected, in words: ``epoch 8 of 18 trained`` or ``ridge 0.1``."""
        if self.best_epoch is None:
            return f"ridge {self.cca_ridge:g}"
        return f"epoch {self.best_epoch} of {self.stopped_epoch} trained"

    def row(self) -> dict[str, Any]:
        """A row of a results table that fills in as runs finish (val selects, test reports), rounded."""
        return {"method": self.method, "seed": self.seed, "selected on val": self.selection(),
                "val mAP": round(self.val_score, 4),
                **{f"test {name}": round(value, 4) for name, value in self.metrics.items()},
                "seconds": round(self.seconds, 1)}


def progress_text(finished: list[MethodResult], failed: int, total: int) -> str:
    """How far ``total`` method x seed runs are: ``finished`` ones and ``failed`` ones, and the best on val so far."""
    text = f"{len(finished) + failed} of {total} method x seed done" + (f" ({failed} failed)" if failed else "")
    if finished:
        best = max(finished, key=lambda r: r.val_score)
        text += f"; best on val so far: {best.method} seed {best.seed} (val mAP {best.val_score:.4f})"
    return text


def epoch_logger(log: Callable[[str], None], method: str, seed: int, train: TrainConfig, *,
                 lines: int = 10) -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch`` callback for :func:`run_one` that logs every epoch up to ``lines`` of them, else every
    k-th and the last (the budget's, or the one early stopping ends on, saying so), so a 40-epoch run says
    how it goes in 10 lines rather than 40. ``train``: the method's settings (``epochs``, ``patience``)."""
    every = -(-train.epochs // lines)

    def log_epoch(entry: dict[str, Any]) -> None:
        done, best = entry["epoch"], entry["best_epoch"]
        last = stops(train, epoch=done, best_epoch=best)
        if done % every == 0 or last:
            early = (f"; stopped early: no better val mAP in {done - best} epochs, selected epoch {best}"
                     if last and done < train.epochs else "")
            log(f"{method} seed {seed}: epoch {done}/{train.epochs}, loss {entry.get('total', float('nan')):.4f}, "
                f"val mAP {entry['val_score']:.4f}{early}")

    return log_epoch


def feature_source(config: ExperimentConfig) -> str | Path:
    """The shards of ``config``: its ``shards``, else the built-in synthetic set, written under ``data_root``
    (:func:`hscmae.synthetic.write_synthetic`: once; later calls find it on disk)."""
    return config.shards if config.shards is not None else write_synthetic(config.synthetic, config.data_root)


def data_key(shards: str | Path) -> str:
    """sha256 of the feature shards' bytes: what identifies a run's data (not its path)."""
    return files_digest(shard_paths(shards))


def run_folder(config: ExperimentConfig, data: str) -> Path:
    """Where the run of ``config`` on the data of :func:`data_key` ``data`` goes: ``config.run_dir``, else
    ``runs_root/run-<hash>``, the hash of the data's bytes, the settings and the code (:data:`TRAIN_CODE`),
    not of path strings, so a changed config, data set or code lands beside an old run instead of over it."""
    if config.run_dir is not None:
        return Path(config.run_dir)
    settings = {k: v for k, v in config.to_dict().items() if k not in PLACES}
    key = digest("train-eval", data, {**settings, "model_preset": config.preset}, source_digest(*TRAIN_CODE))
    return Path(config.runs_root) / f"run-{short(key)}"


def prepare(config: ExperimentConfig) -> PreparedData:
    """Load the shards (:func:`feature_source`), carve val if absent, pad each split."""
    source = feature_source(config)
    features = load_feature_set(source)
    split = carve_val(features.split, features.label_id, config.val_fraction, config.split_seed)
    counts = {s: int((split == s).sum()) for s in SPLITS}
    missing = [s for s, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"{source}: no clips in split(s) {missing} (clips per split: {counts})")
    arrays = {s: ClipArrays.from_feature_set(features.subset(split == s)) for s in SPLITS}
    return PreparedData(**arrays, info=data_info(features.meta, counts, str(source), config.seeds,
                                                 clip_level=arrays["train"].clip_level_modalities))


def _save_cca(cca: LinearCCA, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        cca.save(str(tmp))


def run_one(method_name: str, seed: int, data: PreparedData, run_dir: str | Path, *,
            config: ExperimentConfig | None = None, progress: bool = True,
            on_epoch: Callable[[dict[str, Any]], None] | None = None, keep_resume_state: bool = True) -> MethodResult:
    """Train (or solve) one method with one seed, select on val, evaluate on test once.

    ``config`` supplies the ``epochs``/``batch_size``/``patience`` overrides and ``posthoc_cca`` (default:
    ``ExperimentConfig()``); ``mask_mode="auto"`` is resolved for ``data.train``.
    ``on_epoch`` gets each training epoch's history entry (trainable methods only).
    The selected model is saved as ``run_dir/checkpoints/<method>-seed<seed>/best.safetensors``; the
    resume state beside it is removed once the run is done unless ``keep_resume_state``.
    """
    config = config or ExperimentConfig(methods=[method_name])
    method = config.method_config(method_name).for_input(clip_level=bool(data.train.clip_level_modalities))
    folder = checkpoint_dir(run_dir, method_name, seed)
    start = time.perf_counter()
    train_mean = {m: x.mean(axis=0) for m, x in zip(MODALITIES, data.train.pooled())}  # a dropped entry's value
    best_epoch = stopped_epoch = cca_ridge = posthoc_ridge = None
    if method.kind == "closed_form":
        train = data.train.pooled()
        cca, history = select_cca(train, data.val.pooled(), data.val.label_id,
                                  k=min(method.cca_dim, *(x.shape[1] for x in train)),
                                  ridges=candidate_ridges(method.cca_ridge))
        chosen = max(history, key=lambda h: h["val_score"])
        cca_ridge, val_score = chosen["ridge"], chosen["val_score"]
        _save_cca(cca, folder / BEST)
        def embedder(clips: ClipArrays) -> tuple[np.ndarray, np.ndarray]:
            return cca.embed(*clips.pooled())

        result = evaluate(*embedder(data.test), data.test.label_id)
        partial = evaluate_partial(embedder, data.test, fill=train_mean)
        result.metrics.update(partial)
        if config.posthoc_cca:  # its +CCA columns are itself: linear CCA of the raw features
            result.metrics.update({POSTHOC_PREFIX + k: v for k, v in list(result.metrics.items()) if k not in partial})
            result.curves.update({POSTHOC_PREFIX + k: v for k, v in list(result.curves.items())})
            result.metrics.update({k.replace("_", "_" + POSTHOC_PREFIX, 1): v for k, v in partial.items()})
    else:
        trained = fit(method, data.train, data.val, seed=seed, scorer=retrieval_score, checkpoint_dir=folder,
                      progress=progress, on_epoch=on_epoch)
        history, val_score = trained.history, trained.val_score
        best_epoch, stopped_epoch = trained.best_epoch, trained.stopped_epoch
        posthoc = None
        if config.posthoc_cca:
            posthoc, tried = select_cca(embed(trained.model, data.train), embed(trained.model, data.val),
                                        data.val.label_id, k=method.model.latent)
            posthoc_ridge = max(tried, key=lambda h: h["val_score"])["ridge"]
            _save_cca(posthoc, folder / POSTHOC_CCA)
        result = evaluate(*embed(trained.model, data.test), data.test.label_id, posthoc=posthoc)
        result.metrics.update(evaluate_partial(lambda clips: embed(trained.model, clips), data.test, fill=train_mean,
                                               posthoc=posthoc))
    if not keep_resume_state:
        drop_resume_state(folder)
    return MethodResult(method=method_name, kind=method.kind, seed=seed, best_epoch=best_epoch,
                        stopped_epoch=stopped_epoch, cca_ridge=cca_ridge, val_score=val_score,
                        metrics=result.metrics, curves=result.curves, history=history,
                        checkpoint=str(folder / BEST), posthoc_ridge=posthoc_ridge,
                        seconds=time.perf_counter() - start)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def summarise(results: list[MethodResult], data: PreparedData, config: ExperimentConfig, run_dir: str | Path) -> Path:
    """Write config, metrics, tables, plots and log of the finished runs into ``run_dir``; return it."""
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    runs = [r.to_dict() for r in results]
    summary = aggregate(runs)
    info = data.info
    resolved = {**config.resolved(clip_level=bool(info["clip_level"])), "run_dir": str(run_dir)}
    _write_text(run_dir / "config.json", json.dumps(resolved, indent=1))
    per_run = [{k: v for k, v in r.items() if k != "history"} for r in runs]
    _write_text(run_dir / "metrics.json", json.dumps({"data": info, "aggregate": summary, "runs": per_run}, indent=1))
    _write_text(run_dir / "results.md", markdown_table(summary, info, config))
    with atomic_path(run_dir / "results.csv") as tmp:
        write_csv(tmp, summary, info)
    log = [json.dumps({"method": r["method"], "seed": r["seed"], **epoch}) for r in runs for epoch in r["history"]]
    _write_text(run_dir / "log.jsonl", "\n".join(log) + "\n")
    title = f"{info['dataset']}, {info['weights']}, {len(info['seeds'])} seed(s)"
    with atomic_path(run_dir / "plots" / "loss_curves.png") as tmp:
        plot_losses(runs, tmp, title)
    with atomic_path(run_dir / "plots" / "pr_curves.png") as tmp:
        plot_pr_curves(runs, tmp, f"test, {title}")
    diagnostics.write([r for r in runs if r["kind"] == "trainable"], run_dir, title)
    method, seed = shown_run([(r.method, r.seed) for r in results])  # retrieval.html: queries, top-5 clips, map
    write_retrieval_page(run_dir, data.test, data.info, method=config.method_config(method), seed=seed)
    return run_dir


def run_experiment(config: ExperimentConfig, *, progress: bool = True) -> Path:
    """Prepare the data, run every method x seed, summarise; returns the run directory (:func:`run_folder`)."""
    run_dir = run_folder(config, data_key(feature_source(config)))
    data = prepare(config)
    jobs = list(itertools.product(config.methods, config.seeds))
    results = [run_one(method, seed, data, run_dir, config=config, progress=False)
               for method, seed in tqdm(jobs, desc="methods x seeds", unit="run", disable=not progress)]
    return summarise(results, data, config, run_dir)
