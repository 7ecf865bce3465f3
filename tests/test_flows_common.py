"""The flows' plain helpers: content hashes, config loading, clip jobs. No Prefect server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.extract import ExtractConfig
from flows.build_features import clip_jobs, extract_cache_config
from flows.common import digest, files_digest, frame_digest, source_digest
from hscmae.config import load_config
from pipeline.media.segment import Segment, SegmentConfig


def test_digest_is_canonical_json_sha256() -> None:
    config = SegmentConfig(fps=2.0)
    expected = hashlib.sha256(json.dumps([{**config.__dict__, "frame_size": [224, 224]}, "x"],
                                         sort_keys=True).encode()).hexdigest()
    assert digest(config, "x") == expected
    assert digest({"b": 1, "a": Path("/p")}) == digest({"a": "/p", "b": 1})  # key order and paths do not matter
    assert digest(SegmentConfig(fps=2.0)) != digest(SegmentConfig(fps=1.0))


def test_frame_digest_follows_rows_not_index() -> None:
    frame = pd.DataFrame({"clip_id": ["a", "b"], "end": [1.0, np.nan]})
    moved = frame.set_axis([10, 11])
    assert frame_digest(frame) == frame_digest(moved)
    changed = frame.assign(end=[1.0, 2.0])
    assert frame_digest(changed) != frame_digest(frame)
    assert frame_digest(frame.iloc[::-1]) != frame_digest(frame)  # order is part of a shard


def test_file_digests_hash_bytes_not_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert files_digest([a]) == files_digest([b]) == digest([hashlib.sha256(b"same bytes").hexdigest()])
    b.write_bytes(b"other bytes")
    assert files_digest([a]) != files_digest([b])


def test_source_digest_hashes_the_module_files() -> None:
    import pipeline.io.atomic as atomic

    expected = hashlib.sha256(b"atomic.py" + Path(atomic.__file__).read_bytes()).hexdigest()
    assert source_digest("pipeline.io.atomic") == expected
    assert source_digest("extractors") != source_digest("pipeline.io.atomic")  # a package counts its modules


def test_weights_files_are_keyed_by_content(tmp_path: Path) -> None:
    first, second = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    first.write_bytes(b"weights")
    second.write_bytes(b"weights")
    key = extract_cache_config(ExtractConfig(visual_weights=str(first)))
    assert key == extract_cache_config(ExtractConfig(visual_weights=str(second)))
    assert key["visual_weights"] == hashlib.sha256(b"weights").hexdigest()
    assert extract_cache_config(ExtractConfig(visual_weights="random"))["visual_weights"] == "random"


def test_clip_jobs_cut_available_clips_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pd.DataFrame({"clip_id": ["a", "b", "c"], "clip_start_s": [5.0, 1.0, 0.0], "clip_end_s": [9.0, 3.0, 2.0],
                         "label": ["x", "y", "x"], "label_id": [0, 1, 0], "split": ["train", "test", "train"]})
    availability = pd.DataFrame({"clip_id": ["a", "b", "c"], "outcome": ["downloaded", "present", "missing"],
                                 "path": ["/m/a.mp4", "/m/b.mp4", ""], "local_start_s": [4.0, 0.0, 0.0]})
    calls = []

    def fake_segment(path: str, clip_id: str, start: float, end: float, config: SegmentConfig) -> Segment:
        calls.append((path, clip_id, start, end))
        return Segment(clip_id=clip_id, audio=np.zeros(1, np.float32), frames=np.zeros((1, 1, 1, 3), np.uint8),
                       frame_times=np.zeros(1))

    monkeypatch.setattr("flows.build_features.segment_clip", fake_segment)
    jobs = clip_jobs(rows, availability, SegmentConfig())
    assert [(j.clip_id, j.label, j.label_id, j.split) for j in jobs] == [("a", "x", 0, "train"), ("b", "y", 1, "test")]
    for job in jobs:
        job.load()
    # a ranged download starting at 4 s holds clip a's 5..9 s at 1..5 s of the local file
    assert calls == [("/m/a.mp4", "a", 1.0, 5.0), ("/m/b.mp4", "b", 1.0, 3.0)]


def test_load_config_reads_yaml_and_json_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("methods: [hscmae, linear-cca]\nseeds: [3]\nepochs: 4\n")
    (tmp_path / "c.json").write_text(json.dumps({"methods": ["dcca"], "val_fraction": 0.2}))
    from_yaml = load_config(tmp_path / "c.yaml", {"seeds": [1, 2], "methods": None})
    assert (from_yaml.methods, from_yaml.seeds, from_yaml.epochs) == (["hscmae", "linear-cca"], [1, 2], 4)
    from_json = load_config(tmp_path / "c.json", {})
    assert (from_json.methods, from_json.val_fraction) == (["dcca"], 0.2)
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml", {})
    (tmp_path / "typo.yaml").write_text("seedz: [1]\n")
    with pytest.raises(ValueError, match="seedz"):
        load_config(tmp_path / "typo.yaml", {})


@pytest.mark.parametrize("module", ["flows.train_eval", "flows.build_features", "flows.demo", "flows.local"])
def test_help_and_bad_arguments_answer_before_heavy_imports(module: str) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for args, code in ((["--help"], 0), (["--no-such-flag"], 2)):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                    if line.startswith("import time:")}
        assert not imported & {"torch", "pandas", "prefect", "numpy"}, (module, args)


def test_finished_run_keeps_its_best_model_not_its_resume_state(tmp_path: Path) -> None:
    from flows.train_eval import drop_resume_state

    for name in ("best.safetensors", "posthoc_cca.safetensors", "last.json", "epoch_0003/student.safetensors",
                 "epoch_0003/state.json", "notes/keep.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    drop_resume_state(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "best.safetensors", "notes/keep.txt", "posthoc_cca.safetensors"]


def test_file_links_point_at_the_file_server_only_for_what_it_serves(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.common import file_url

    plot = tmp_path / "runs" / "run 1" / "loss.png"
    assert file_url(plot) == plot.as_uri()  # no server: a file link
    monkeypatch.setenv("HSCMAE_FILES_URL", "http://127.0.0.1:4201/")
    monkeypatch.setenv("HSCMAE_FILES_ROOT", str(tmp_path / "runs"))
    assert file_url(plot) == "http://127.0.0.1:4201/run%201/loss.png"
    assert file_url(tmp_path / "elsewhere.png") == (tmp_path / "elsewhere.png").as_uri()


def test_run_forms_mirror_every_stage_config_field_and_default() -> None:
    """A field added to a stage config must reach the UI's form too (and keep its default)."""
    import dataclasses

    from extractors.extract import ExtractConfig
    from flows.params import AcquireSettings, DemoSettings, ExperimentSettings, ExtractSettings, SegmentSettings
    from hscmae.experiment import ExperimentConfig
    from pipeline.media.acquire import AcquireConfig
    from pipeline.datasets.demo_videos import DemoConfig

    for form, config, outside in ((DemoSettings, DemoConfig, set()), (SegmentSettings, SegmentConfig, set()),
                                  (ExtractSettings, ExtractConfig, {"clips_per_shard"}),
                                  (AcquireSettings, AcquireConfig, {"cache_dir"}),
                                  (ExperimentSettings, ExperimentConfig, set())):
        assert set(form.model_fields) == {f.name for f in dataclasses.fields(config)} - outside, form.__name__
        assert all(field.description for field in form.model_fields.values()), form.__name__
    assert DemoSettings().to_config() == DemoConfig() and SegmentSettings().to_config() == SegmentConfig()
    assert ExtractSettings().to_config(256) == ExtractConfig()
    root = Path("/out")
    got = ExperimentSettings().to_config(root)
    assert (got.data_root, got.runs_root) == ("/out/data", "/out/runs")
    assert dataclasses.replace(got, data_root="d", runs_root="r") == ExperimentConfig(data_root="d", runs_root="r")
    with pytest.raises(ValueError):
        ExtractSettings(visual_model="resnet18")
    with pytest.raises(ValueError):
        DemoSettings(test_fraction=5)
