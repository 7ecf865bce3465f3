"""The experiment: every method x every seed on one feature set, then tables and plots.

Plain Python in units a flow can map as tasks: :func:`prepare` (once), :func:`run_one` (per
method and seed), :func:`summarise` (once); :func:`run_experiment` chains them.

Selection never sees test: a trainable method keeps the epoch with the best mean mAP on val,
linear CCA (baseline and post-hoc) the ridge with the best mean mAP on val; test is embedded
and scored once, on the selected model. The run directory holds ``config.json``,
``metrics.json``, ``results.md``, ``results.csv``, ``plots/*.png``, ``log.jsonl`` and
``checkpoints/<method>-seed<s>/`` (``best.safetensors`` is the selected model,
``posthoc_cca.safetensors`` its post-hoc CCA), ``diagnostics.jsonl`` and ``plots/diagnostics.png``.

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

from hscmae.cca import LinearCCA
from hscmae.checkpoint import BEST, POSTHOC_CCA, checkpoint_dir
from hscmae import diagnostics
from hscmae.config import ExperimentConfig
from hscmae.data import ClipArrays
from hscmae.evaluate import POSTHOC_PREFIX, evaluate, evaluate_partial, retrieval_score, select_cca
from hscmae.report import aggregate, data_info, markdown_table, plot_losses, plot_pr_curves, write_csv
from hscmae.retrieval_page import write_retrieval_page
from hscmae.synthetic import write_synthetic
from hscmae.train import embed, fit
from pipeline.io.atomic import atomic_path
from pipeline.features.shards import load_feature_set
from pipeline.vocab import SPLITS
from pipeline.datasets.splits import carve_val


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

    ``best_epoch`` indexes ``history`` (for linear CCA: the chosen ridge); ``posthoc_ridge`` is the
    ridge of the post-hoc CCA (``None`` without one).
    """

    method: str
    kind: str
    seed: int
    best_epoch: int
    val_score: float
    metrics: dict[str, float]
    curves: dict[str, dict[str, list[float]]]
    history: list[dict[str, Any]]
    checkpoint: str
    posthoc_ridge: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prepare(config: ExperimentConfig) -> PreparedData:
    """Load the shards (generating the synthetic set if asked), carve val if absent, pad each split."""
    source = config.shards if config.shards is not None else write_synthetic(config.synthetic, config.data_root)
    features = load_feature_set(source)
    split = carve_val(features.split, features.label_id, config.val_fraction, config.split_seed)
    counts = {s: int((split == s).sum()) for s in SPLITS}
    missing = [s for s, n in counts.items() if n == 0]
    if missing:
        raise ValueError(f"{source}: no clips in split(s) {missing} (clips per split: {counts})")
    arrays = {s: ClipArrays.from_feature_set(features.subset(split == s)) for s in SPLITS}
    return PreparedData(**arrays, info=data_info(features.meta, counts, str(source), config.seeds))


def _save_cca(cca: LinearCCA, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        cca.save(str(tmp))


def run_one(method_name: str, seed: int, data: PreparedData, run_dir: str | Path, *,
            config: ExperimentConfig | None = None, progress: bool = True,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> MethodResult:
    """Train (or solve) one method with one seed, select on val, evaluate on test once.

    ``config`` supplies the ``epochs``/``batch_size`` overrides and ``posthoc_cca`` (default: ``ExperimentConfig()``).
    ``on_epoch`` gets each training epoch's history entry (trainable methods only).
    The selected model is saved as ``run_dir/checkpoints/<method>-seed<seed>/best.safetensors``.
    """
    config = config or ExperimentConfig(methods=[method_name])
    method = config.method_config(method_name)
    folder = checkpoint_dir(run_dir, method_name, seed)
    start = time.perf_counter()
    posthoc_ridge = None
    if method.kind == "closed_form":
        train = data.train.pooled()
        cca, history = select_cca(train, data.val.pooled(), data.val.label_id,
                                  k=min(method.cca_dim, *(x.shape[1] for x in train)))
        best_epoch = int(np.argmax([h["val_score"] for h in history]))
        _save_cca(cca, folder / BEST)
        def embedder(clips: ClipArrays) -> tuple[np.ndarray, np.ndarray]:
            return cca.embed(*clips.pooled())

        result = evaluate(*embedder(data.test), data.test.label_id)
        partial = evaluate_partial(embedder, data.test)
        result.metrics.update(partial)
        if config.posthoc_cca:  # its +CCA columns are itself: linear CCA of the raw features
            result.metrics.update({POSTHOC_PREFIX + k: v for k, v in list(result.metrics.items()) if k not in partial})
            result.curves.update({POSTHOC_PREFIX + k: v for k, v in list(result.curves.items())})
            result.metrics.update({k.replace("_", "_" + POSTHOC_PREFIX, 1): v for k, v in partial.items()})
    else:
        trained = fit(method, data.train, data.val, seed=seed, scorer=retrieval_score, checkpoint_dir=folder,
                      progress=progress, on_epoch=on_epoch)
        history, best_epoch = trained.history, trained.best_epoch
        posthoc, posthoc_ridge = None, None
        if config.posthoc_cca:
            posthoc, tried = select_cca(embed(trained.model, data.train), embed(trained.model, data.val),
                                        data.val.label_id, k=method.model.latent)
            posthoc_ridge = max(tried, key=lambda h: h["val_score"])["ridge"]
            _save_cca(posthoc, folder / POSTHOC_CCA)
        result = evaluate(*embed(trained.model, data.test), data.test.label_id, posthoc=posthoc)
        result.metrics.update(evaluate_partial(lambda clips: embed(trained.model, clips), data.test, posthoc=posthoc))
    return MethodResult(method=method_name, kind=method.kind, seed=seed, best_epoch=best_epoch,
                        val_score=history[best_epoch]["val_score"],
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
    resolved = {**config.resolved(), "run_dir": str(run_dir)}
    _write_text(run_dir / "config.json", json.dumps(resolved, indent=1))
    per_run = [{k: v for k, v in r.items() if k != "history"} for r in runs]
    _write_text(run_dir / "metrics.json", json.dumps({"data": info, "aggregate": summary, "runs": per_run}, indent=1))
    _write_text(run_dir / "results.md", markdown_table(summary, info))
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
    write_retrieval_page(run_dir, results, data, config)  # retrieval.html: queries, top-5 clips, embedding map
    return run_dir


def run_experiment(config: ExperimentConfig, *, progress: bool = True) -> Path:
    """Prepare the data, run every method x seed, summarise; returns the run directory."""
    run_dir = config.resolved_run_dir()
    data = prepare(config)
    jobs = list(itertools.product(config.methods, config.seeds))
    results = [run_one(method, seed, data, run_dir, config=config, progress=False)
               for method, seed in tqdm(jobs, desc="methods x seeds", unit="run", disable=not progress)]
    return summarise(results, data, config, run_dir)
