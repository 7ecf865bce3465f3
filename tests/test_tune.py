"""Tuning on val: search spaces follow the levels, test is never read, a killed study resumes, the CLI round trip."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from hscmae import tuning
from hscmae.config import ExperimentConfig, load_config, methods
from hscmae.experiment import prepare, run_experiment
from hscmae.synthetic import SyntheticConfig, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
SMALL = SyntheticConfig(clips=240, classes=4, seconds=4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated feature set with train, val and test splits."""
    return write_synthetic(SMALL, tmp_path_factory.mktemp("tune-data"))


def _paths(name: str) -> set[str]:
    return {p.path for p in tuning.search_space(methods()[name])}


def test_search_space_follows_the_levels_each_method_uses() -> None:
    common = {"train.lr", "train.weight_decay", "model.dropout", "model.hidden", "model.depth", "model.latent"}
    teacher = {"loss.topk", "loss.teacher_temperature"}
    assert _paths("hscmae") == common | teacher | {"loss.nce_temperature", "loss.mask_ratio", "train.weights_lr",
                                                    "loss.cca_ridge"}
    assert _paths("clip") == common | {"loss.nce_temperature"}  # own pair only, no mask, no global, fixed weights
    assert _paths("dcca") == common | {"loss.cca_ridge"}
    assert _paths("cav-mae") == common | {"loss.nce_temperature", "loss.mask_ratio"}  # own pair, fixed weights
    assert _paths("linear-cca") == {"cca_dim", "cca_ridge"}


def test_flat_settings_become_nested_config_changes() -> None:
    changes = tuning.as_changes({"train.lr": 1e-3, "model.latent": 16, "cca_dim": 8})
    assert changes == {"train": {"lr": 1e-3}, "model": {"latent": 16}, "cca_dim": 8}
    method = methods()["clip"].updated({k: v for k, v in changes.items() if k != "cca_dim"})
    assert (method.train.lr, method.model.latent) == (1e-3, 16)


def test_tuning_sees_the_same_val_as_train_eval_and_no_test(shards: Path) -> None:
    config = ExperimentConfig(shards=str(shards), methods=["clip"], val_fraction=0.2)
    data = tuning.prepare_train_val(config)
    full = prepare(config)
    assert np.array_equal(data.val.label_id, full.val.label_id)
    assert np.array_equal(data.train.label_id, full.train.label_id)
    assert len(data.train) + len(data.val) == len(full.train) + len(full.val)


def test_linear_cca_trial_scores_its_ridge_and_dimension_on_val(shards: Path) -> None:
    from hscmae.cca import fit_cca
    from hscmae.evaluate import retrieval_score

    data = tuning.prepare_train_val(ExperimentConfig(shards=str(shards), methods=["linear-cca"]))
    method = methods()["linear-cca"].updated({"cca_dim": 6, "cca_ridge": 0.5})
    expected = retrieval_score(*fit_cca(*data.train.pooled(), k=6, ridge=0.5).embed(*data.val.pooled()),
                               data.val.label_id)
    assert tuning.trial_score(method, data.train, data.val) == pytest.approx(expected, abs=1e-12)


CHILD = """
import sys
from hscmae import tuning
from hscmae.config import ExperimentConfig
config = ExperimentConfig(shards=sys.argv[1], methods=["clip"], epochs=2, model_preset="demo")
data = tuning.prepare_train_val(config)
while True:
    study = tuning.load_study(sys.argv[2], "clip-resume", trials=50, seed=0)
    tuning.run_trial(study, config.method_config("clip"), data.train, data.val)
"""


def _finished(db: Path) -> list[tuple[int, float]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as connection:
        try:
            rows = connection.execute("SELECT t.number, v.value FROM trials t JOIN trial_values v "
                                      "ON t.trial_id = v.trial_id WHERE t.state = 'COMPLETE'").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
    return sorted(rows)


@pytest.mark.slow
def test_a_killed_tune_continues_its_study(shards: Path, tmp_path: Path) -> None:
    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(shards), url], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_finished(db)) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    before = _finished(db)
    assert len(before) >= 2, "the child finished no trials before the kill"

    config = ExperimentConfig(shards=str(shards), methods=["clip"], epochs=2, model_preset="demo")
    data = tuning.prepare_train_val(config)
    budget = len(before) + 1
    study = tuning.load_study(url, "clip-resume", trials=budget, seed=0)
    while len(tuning.finished(study)) < budget:
        tuning.run_trial(study, config.method_config("clip"), data.train, data.val)
    after = [(t.number, t.value) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(after)[:len(before)] == before  # the trials done before the kill are kept, not re-run
    assert len(tuning.finished(study)) == budget


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(cwd / ".prefect")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_tune_writes_a_config_that_train_eval_runs(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tune = _run("flows.tune", "--features", str(shards), "--methods", "clip", "linear-cca", "--trials", "2",
                "--epochs", "2", "--out", str(out), cwd=tmp_path)
    assert tune.returncode == 0, tune.stderr[-3000:]
    tuned_path = next(out.glob("tune/*/tuned.yaml"))
    tuned = yaml.safe_load(tuned_path.read_text())
    assert tuned["tuning"]["trials_per_method"] == 2
    assert set(tuned["method_configs"]) == {"clip", "linear-cca"}
    assert set(tuned["method_configs"]["linear-cca"]) == {"cca_dim", "cca_ridge"}
    assert list(out.glob("tune/*/plots/clip-*-history.png"))

    # train-eval takes the file as it is: the command line resolves the tuned settings ...
    shown = _run("flows.train_eval", "--config", str(tuned_path), "--seeds", "0", "--print-config", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    resolved = yaml.safe_load(shown.stdout)["methods"]
    assert resolved["clip"]["train"]["lr"] == tuned["method_configs"]["clip"]["train"]["lr"]
    assert resolved["linear-cca"]["cca_ridge"] == tuned["method_configs"]["linear-cca"]["cca_ridge"]
    # ... and the run's table says how the recipes were chosen (the flow runs the same library call per task)
    config = load_config(tuned_path, {"seeds": [0], "runs_root": str(tmp_path / "runs")})
    results = (run_experiment(config, progress=False) / "results.md").read_text()
    assert "tuned on val: 2 trials per method" in results
