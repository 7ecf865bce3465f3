"""The flows' plain helpers and the library they call: content hashes, config loading, clip jobs, shard
records (found, kept, relocated failures). No Prefect server."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extractors.config import ExtractConfig, extract_cache_config
from hscmae.config import load_config
from pipeline.features.build import (ExtractJob, clip_jobs, feature_set_outcome, finish_shard, relocate, shard_done,
                                     shard_on_disk)
from pipeline.features.failures import Failure
from pipeline.features.shards import ClipFeatures, write_shard
from pipeline.io.digest import digest, files_digest, frame_digest, source_digest
from pipeline.media.segment import Segment, SegmentConfig
from pipeline.vocab import RANDOM_WEIGHTS


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
    assert extract_cache_config(ExtractConfig(visual_weights=RANDOM_WEIGHTS))["visual_weights"] == RANDOM_WEIGHTS


def test_clip_jobs_cut_available_clips_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pd.DataFrame({"clip_id": ["a", "b", "c", "d"], "clip_start_s": [5.0, 1.0, 0.0, 3.0],
                         "clip_end_s": [9.0, 3.0, 2.0, 8.0], "label": ["x", "y", "x", "y"], "label_id": [0, 1, 0, 1],
                         "split": ["train", "test", "train", "val"]})
    availability = pd.DataFrame({"clip_id": ["a", "b", "c", "d"], "outcome": ["downloaded", "present", "missing",
                                                                              "downloaded"],
                                 "path": ["/m/a.mp4", "/m/b.mp4", "", "/m/d.mp4"], "local_start_s": [4.0, 0.0, 0.0, 4.5]})
    calls = []

    def fake_segment(path: str, clip_id: str, start: float, end: float, config: SegmentConfig) -> Segment:
        calls.append((path, clip_id, start, end))
        return Segment(clip_id=clip_id, audio=np.zeros(1, np.float32), frames=np.zeros((1, 1, 1, 3), np.uint8),
                       frame_times=np.zeros(1))

    monkeypatch.setattr("pipeline.features.build.segment_clip", fake_segment)
    jobs = clip_jobs(rows, availability, SegmentConfig())
    assert [(j.clip_id, j.label, j.label_id, j.split) for j in jobs] == [
        ("a", "x", 0, "train"), ("b", "y", 1, "test"), ("d", "y", 1, "val")]
    for job in jobs:
        job.load()
    # a ranged download starting at 4 s holds clip a's 5..9 s at 1..5 s of the local file; a whole file (b)
    # holds its clip where the manifest says; d's download starts 1.5 s into its clip: from the file's start
    assert calls == [("/m/a.mp4", "a", 1.0, 5.0), ("/m/b.mp4", "b", 1.0, 3.0), ("/m/d.mp4", "d", 0.0, 3.5)]


def _shard_job(root: Path, key: str, clip_ids: list[str]) -> ExtractJob:
    rows = pd.DataFrame({"clip_id": clip_ids})
    return ExtractJob(key=key, index=0, rows=rows, shard=root / "shards" / "shard-00000.parquet",
                      failures=root / "failures" / "shard-00000.parquet", done=root / "done" / "shard-00000.json",
                      work=root / "work" / "shard-00000", lock=root / "shard.lock", dataset="test")


def _availability(paths: dict[str, str]) -> pd.DataFrame:
    """Every clip of ``paths`` present at its path, or missing where the path is ""."""
    return pd.DataFrame({"clip_id": list(paths), "source_kind": "file", "source": [f"{c}.mp4" for c in paths],
                         "outcome": ["present" if p else "missing" for p in paths.values()], "path": list(paths.values()),
                         "local_start_s": 0.0, "message": ["" if p else "no file" for p in paths.values()]})


def test_finished_shard_is_reused_kept_or_rebuilt(tmp_path: Path) -> None:
    """Done by this job: reused. Finished earlier, a clip not acquirable now: kept as it is. Finished earlier with
    every clip available (content changed), or damaged: None, i.e. rebuild."""
    job = _shard_job(tmp_path, "key-1", ["a", "b", "c"])
    meta = {m: {"extractor": "x", "version": "1", "params": {}, "weights": RANDOM_WEIGHTS} for m in ("audio", "visual")}
    write_shard(job.shard, [ClipFeatures(c, "bell", 0, "train", np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))
                            for c in ("a", "b")], meta)
    built = _availability({"a": "/d/a.mp4", "b": "/d/b.mp4", "c": ""})
    undecodable = Failure("b", "segment", "undecodable", "/d/b.mp4: decode error")
    outcome = finish_shard(job, built, [undecodable])
    assert (outcome.extracted, outcome.reused, outcome.kept) == (2, False, ())
    assert outcome.sources == {"a": "/d/a.mp4", "b": "/d/b.mp4"} and shard_done(job)

    again = shard_on_disk(job, built)
    assert again.reused and again.failures == [undecodable] and again.kept == ()  # acquisition's come afresh

    moved = dataclasses.replace(job, key="key-2")  # the sources' content keys changed: they are missing now
    before = job.shard.read_bytes()
    kept = shard_on_disk(moved, _availability({"a": "", "b": "/d/b.mp4", "c": ""}))
    assert kept.kept == ("a",) and kept.extracted == 2 and not shard_done(moved)
    assert job.shard.read_bytes() == before
    assert shard_on_disk(moved, _availability({"a": "/e/a.mp4", "b": "/e/b.mp4", "c": ""})) is None  # all there

    job.shard.write_bytes(before[:-10])  # damaged: not a finished shard, whatever is available
    assert shard_on_disk(moved, _availability({"a": "", "b": "", "c": ""})) is None and not shard_done(job)


def test_failure_records_name_where_clips_are_now() -> None:
    failures = [Failure("a", "segment", "undecodable", "/old/a.mp4: cannot open: invalid data: '/old/a.mp4'"),
                Failure("b", "extract", "non_finite", "visual features have 2 non-finite values")]
    moved = relocate(failures, {"a": "/old/a.mp4", "b": "/old/b.mp4"}, {"a": "/new/a.mp4", "b": "/new/b.mp4"})
    assert [f.message for f in moved] == ["/new/a.mp4: cannot open: invalid data: '/new/a.mp4'",
                                          "visual features have 2 non-finite values"]
    assert relocate(failures, {"a": "/old/a.mp4"}, {}) == failures  # nowhere now: left as recorded


def test_feature_set_outcome_takes_acquisition_from_this_run(tmp_path: Path) -> None:
    """A cached shard outcome recorded at the old place: acquisition failures and paths come from this run."""
    from pipeline.features.build import ShardOutcome

    old = ShardOutcome(0, tmp_path / "s.parquet", 3, 2, [Failure("b", "segment", "silent", "/old/b.mp4: quiet")],
                       {"a": "/old/a.mp4", "b": "/old/b.mp4"}, reused=False)
    kept = ShardOutcome(1, tmp_path / "t.parquet", 2, 2, [], {"d": "/old/d.mp4", "e": "/old/e.mp4"}, reused=True,
                        kept=("d", "e"))
    now = [_availability({"a": "/new/a.mp4", "b": "/new/b.mp4", "c": ""}), _availability({"d": "", "e": ""})]
    outcome, failures = feature_set_outcome(tmp_path, [old, kept], now, ["Cached", "Completed"])
    assert [(f.clip_id, f.stage, f.message) for f in failures] == [
        ("c", "acquire", "c.mp4: no file"), ("b", "segment", "/new/b.mp4: quiet"),
        ("d", "acquire", "d.mp4: no file"), ("e", "acquire", "e.mp4: no file")]
    assert (outcome.asked, outcome.obtained, outcome.extracted) == (5, 2, 4)
    assert outcome.failures_by_kind == {"missing": 3, "silent": 1}
    assert (outcome.kept_shards, outcome.kept_clips, outcome.reused_on_disk) == (1, {"missing": 2}, 1)
    assert outcome.shard_states == {"Cached": 1, "Completed": 1}


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
    from hscmae.checkpoint import drop_resume_state

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

    from extractors.config import ExtractConfig
    from flows.params import AcquireSettings, DemoSettings, ExtractSettings, SegmentSettings
    from pipeline.media.acquire import AcquireConfig
    from pipeline.datasets.demo_videos import DemoConfig

    for form, config, outside in ((DemoSettings, DemoConfig, set()), (SegmentSettings, SegmentConfig, set()),
                                  (ExtractSettings, ExtractConfig, {"clips_per_shard"}),
                                  (AcquireSettings, AcquireConfig, {"cache_dir"})):
        assert set(form.model_fields) == {f.name for f in dataclasses.fields(config)} - outside, form.__name__
        assert all(field.description for field in form.model_fields.values()), form.__name__
    assert DemoSettings().to_config() == DemoConfig() and SegmentSettings().to_config() == SegmentConfig()
    assert ExtractSettings().to_config(256) == ExtractConfig()
    with pytest.raises(ValueError):
        ExtractSettings(visual_model="resnet18")
    with pytest.raises(ValueError):
        DemoSettings(test_fraction=5)
