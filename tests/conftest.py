"""Shared fixtures. Keep each one small and fast: the whole suite runs on two CPU cores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.datasets.demo_videos import DemoConfig, write_demo

DEMO_CLIPS = 12  # a few of each of the five classes; about two seconds to write


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
def one_torch_thread():
    """Tiny models run fastest on one thread; the count is restored so later modules see the default."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
