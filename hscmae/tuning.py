"""Equal-budget tuning on val with Optuna: each method's search space, one trial, the study, ``tuned.yaml``.

Every method gets the same number of trials and the same epoch budget per trial; a trial trains on
train and is scored on val only (the mean of A->V and V->A mAP, the selection score of the
experiments). The test split is never loaded. Studies live in Optuna's database storage, one study
per method, named by a hash of what decides it (data, base config, search space, budget), so a
killed tune continues its study and trials on several machines share it.

The search spaces (:func:`search_space`) follow what a method uses: every trainable method tunes
its optimiser, encoder size and dropout; a method with the local level adds its InfoNCE temperature,
one with a teacher its top-k and soft-target temperature, one with masking its mask ratio, one with
learned loss weights their learning rate, one with the global level its CCA ridge; linear CCA tunes
its ridge and dimension.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from hscmae.config import ExperimentConfig, MethodConfig
from hscmae.data import ClipArrays

TRIAL_SEED = 0  # every trial trains with this seed; the final tables then run the tuned config over seeds
HEARTBEAT_S = 10  # a running trial writes a heartbeat this often ...
GRACE_S = 30  # ... and one silent this long (its process was killed) is failed and retried once
STARTUP_TRIALS = 5  # random trials before TPE models the history (capped at half the budget)


@dataclass(frozen=True)
class Param:
    """One searched setting: ``path`` into the method config (``"train.lr"``) and its range or choices."""

    path: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this setting for ``trial``."""
        if self.choices:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, log=self.log)


def search_space(method: MethodConfig) -> tuple[Param, ...]:
    """The settings tuned for ``method``, from the levels it uses (see the module docstring)."""
    if method.kind == "closed_form":
        return (Param("cca_dim", 4, 128, log=True, integer=True), Param("cca_ridge", 1e-4, 1e2, log=True))
    loss = method.loss
    space = [Param("train.lr", 1e-4, 3e-3, log=True), Param("train.weight_decay", 1e-6, 1e-2, log=True),
             Param("model.dropout", 0.0, 0.5), Param("model.hidden", choices=(128, 256, 512, 1024)),
             Param("model.depth", 1, 3, integer=True), Param("model.latent", choices=(16, 32, 64))]
    if loss.use_local:
        space.append(Param("loss.nce_temperature", 0.02, 0.5, log=True))
    if loss.use_local and loss.topk > 0:
        space += [Param("loss.topk", 1, 20, integer=True), Param("loss.teacher_temperature", 0.01, 0.5, log=True)]
    if loss.mask_ratio > 0:
        space.append(Param("loss.mask_ratio", 0.1, 0.7))
    if loss.learn_weights:
        space.append(Param("train.weights_lr", 1e-3, 1e-1, log=True))
    if loss.use_global:
        space.append(Param("loss.cca_ridge", 1e-4, 1e-1, log=True))
    return tuple(space)


def as_changes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{"train.lr": 1e-3, "cca_dim": 16}`` as the nested changes of ``MethodConfig.updated``."""
    changes: dict[str, Any] = {}
    for path, value in values.items():
        *parts, leaf = path.split(".")
        target = changes
        for part in parts:
            target = target.setdefault(part, {})
        target[leaf] = value
    return changes


@dataclass
class TuneData:
    """The clips a tune may see: train and val (``[N, T, D]`` per modality, see :class:`ClipArrays`)."""

    train: ClipArrays
    val: ClipArrays


def prepare_train_val(config: ExperimentConfig) -> TuneData:
    """Train and val of ``config``'s shards, val carved from train exactly as ``train-eval`` carves it.

    Test clips are dropped right after the shards are read, before anything is computed from them.
    """
    from pipeline.datasets.splits import carve_val
    from pipeline.features.shards import load_feature_set

    features = load_feature_set(config.shards)
    features = features.subset(features.split != "test")
    split = carve_val(features.split, features.label_id, config.val_fraction, config.split_seed)
    return TuneData(train=ClipArrays.from_feature_set(features.subset(split == "train")),
                    val=ClipArrays.from_feature_set(features.subset(split == "val")))


def trial_score(method: MethodConfig, train: ClipArrays, val: ClipArrays, *,
                report: Callable[[int, float], None] | None = None) -> float:
    """Best val score (mean mAP, both directions) of ``method`` trained on ``train``; test is not involved.

    ``report(epoch, val_score)`` is called after every epoch, counted from 1 (an Optuna pruner raises from it).
    """
    from hscmae.evaluate import candidate_ridges, retrieval_score, select_cca

    if method.kind == "closed_form":
        pooled = train.pooled()
        _, history = select_cca(pooled, val.pooled(), val.label_id, ridges=candidate_ridges(method.cca_ridge),
                                k=min(method.cca_dim, *(x.shape[1] for x in pooled)))
        return float(max(h["val_score"] for h in history))
    from hscmae.train import fit

    trained = fit(method, train, val, seed=TRIAL_SEED, scorer=retrieval_score, progress=False,
                  on_epoch=None if report is None else lambda entry: report(entry["epoch"], entry["val_score"]))
    return float(trained.val_score)


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's database storage at ``url`` (``sqlite:///...`` or a server URL); a trial whose process
    died is failed after :data:`GRACE_S` seconds and its settings tried once more."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                      heartbeat_stale_trial_callback=retry)


def load_study(url: str, name: str, *, trials: int, seed: int) -> optuna.Study:
    """The study ``name`` (created if new) with a seeded TPE sampler and a median pruner on val mAP.

    The sampler's seed moves with the trials already in the study, so a resumed or parallel trial
    does not repeat the draws of the first one.
    """
    with warnings.catch_warnings():  # heartbeats and the retry callback are marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        store = storage(url)
    known = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(store)}
    sampler = optuna.samplers.TPESampler(seed=seed + known.get(name, 0),
                                         n_startup_trials=min(STARTUP_TRIALS, max(1, trials // 2)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=min(STARTUP_TRIALS, max(1, trials // 2)),
                                         n_warmup_steps=3)  # steps are epochs from 1: pruned from the third on
    return optuna.create_study(storage=store, study_name=name, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the budget: completed or pruned (failed ones are retried, not counted)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def run_trial(study: optuna.Study, method: MethodConfig, train: ClipArrays, val: ClipArrays) -> int:
    """One trial of ``study``: draw settings, train on train, report each epoch's val score; its number."""
    space = search_space(method)

    def objective(trial: optuna.Trial) -> float:
        config = method.updated(as_changes({p.path: p.suggest(trial) for p in space}))

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val mAP {score:.4f} at epoch {epoch}")

        score = trial_score(config, train, val, report=report)
        if not math.isfinite(score):
            raise FloatingPointError(f"{method.name}: non-finite val score {score}")
        return score

    before = {t.number for t in study.get_trials(deepcopy=False)}
    study.optimize(objective, n_trials=1, catch=())
    return max({t.number for t in study.get_trials(deepcopy=False)} - before)


def best_changes(study: optuna.Study) -> dict[str, Any]:
    """The best completed trial's settings as ``MethodConfig.updated`` changes."""
    return as_changes(study.best_trial.params)


def tuned_config(base: ExperimentConfig, studies: Mapping[str, optuna.Study], *, trials: int,
                 storage_url: str) -> dict[str, Any]:
    """``tuned.yaml``'s content: ``base`` with every method's best settings merged into ``method_configs``,
    and a ``tuning`` note (trials per method, the storage, each study's name) that tables show."""
    data = base.to_dict()
    data["method_configs"] = {name: _merged(data["method_configs"].get(name, {}), best_changes(study))
                              for name, study in studies.items()}
    data["tuning"] = {"trials_per_method": trials, "storage": storage_url,
                      "studies": {name: study.study_name for name, study in studies.items()},
                      "best_val_score": {name: study.best_value for name, study in studies.items()}}
    return data


def _merged(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def trials_table(studies: Mapping[str, optuna.Study]) -> list[dict[str, Any]]:
    """Best-so-far per method: finished trials, pruned, best val mAP and its settings (one row each)."""
    rows = []
    for name, study in studies.items():
        done = finished(study)
        complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value, default=None)
        rows.append({"method": name, "finished trials": len(done),
                     "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
                     "best val mAP": round(best.value, 4) if best else float("nan"),
                     "best settings": ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()) if best else ""})
    return rows


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """The optimisation history and (with two or more finished trials) parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from pipeline.io.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = [("history", ovm.plot_optimization_history)]
    complete = [t for t in finished(study) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) >= 2 and len({str(t.params) for t in complete}) >= 2:
        plots.append(("importance", ovm.plot_param_importances))
    for kind, plot in plots:
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
        figure = np.ravel(axes)[0].figure
        figure.set_size_inches(7, 4.5)
        path = folder / f"{study.study_name}-{kind}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
