"""Shared fixtures. Keep each one small and fast: the whole suite runs on two CPU cores."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.datasets.demo_videos import DemoConfig, write_demo

DEMO_CLIPS = 12  # a few of each of the five classes; about two seconds to write


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files with the most slow tests first, in their usual order otherwise. ``make test`` hands whole
    files to its workers in this order (``--dist loadfile --no-loadscope-reorder``): the long files start
    at once and the short ones fill in behind them, so the workers finish together."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def demo_config() -> DemoConfig:
    """Settings of the shared demo set (10 s, 160x120 at 10 fps, AAC at 22.05 kHz)."""
    return DemoConfig(seed=0)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, demo_config: DemoConfig) -> Path:
    """A small demo set: ``<dir>/<class>/<clip>.mp4`` and ``<dir>/labels.csv``. Read-only for tests."""
    out = tmp_path_factory.mktemp("demo")
    write_demo(out, DEMO_CLIPS, config=demo_config, workers=1)
    return out


@pytest.fixture(scope="session")
def demo_labels(demo_dir: Path) -> pd.DataFrame:
    """The demo set's ground truth (``labels.csv``)."""
    return pd.read_csv(demo_dir / "labels.csv", keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local Prefect stack for the module (``python -m flows.local up`` in a temporary Prefect home); yields
    the environment that reaches it. See tests/prefect_stack.py."""
    from prefect_stack import local_stack

    yield from local_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; the count is restored so later modules see the default."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class FinishedRun:
    """A finished ``hscmae.experiment.run_experiment`` run (read-only for tests): its config, folder,
    ``metrics.json`` and prepared data (``hscmae.experiment.PreparedData``)."""

    config: Any
    run_dir: Path
    metrics: dict[str, Any]
    data: Any


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """hscmae (4 epochs) and linear CCA, seeds 0 and 1, on a tiny synthetic set (640 clips of 4 s, 4 classes,
    16-d audio, 32-d visual, no val split: val is carved from train); a few seconds."""
    from hscmae.config import ExperimentConfig
    from hscmae.experiment import prepare, run_experiment
    from hscmae.synthetic import SyntheticConfig

    tiny = SyntheticConfig(clips=640, classes=4, seconds=4, audio_dim=16, visual_dim=32, signal_dim=4,
                           test_fraction=0.2, modes=1, nuisance_dim=2, hidden=32, val_fraction=0.0)
    root = tmp_path_factory.mktemp("finished-run")
    config = ExperimentConfig(synthetic=tiny, data_root=str(root / "data"), methods=["hscmae", "linear-cca"],
                              seeds=[0, 1], epochs=4, batch_size=128, runs_root=str(root / "runs"))
    run_dir = run_experiment(config, progress=False)
    return FinishedRun(config=config, run_dir=run_dir, metrics=json.loads((run_dir / "metrics.json").read_text()),
                       data=prepare(config))
