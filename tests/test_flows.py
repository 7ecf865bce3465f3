"""The Prefect flows against a real local stack (`python -m flows.local up` on 127.0.0.1).

One stack serves the module (the ``stack`` fixture): a server with its own Prefect home and SQLite,
the process work pool, the deployments of prefect.yaml and a worker. The flows run on a small demo
set (32 clips of 1.5 s, plus one missing and one corrupt file) with random extractor weights. The
last test runs the deployments from the worker and stops the stack. SIGTERM is sent to a command
line without a server in tests/test_sigterm.py.
"""

from __future__ import annotations

import flows  # noqa: F401  (first: it points Prefect at the project-local home before Prefect is imported)

import dataclasses
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter,
                                            FlowRunFilterDeploymentId, FlowRunFilterId)
from prefect.client.schemas.objects import State

from extractors.config import ExtractConfig
from extractors.extract import extract_features
from flows import PROJECT_ROOT
from flows.build_features import build_features
from flows.embed import embed
from flows.runners import task_runner
from flows.feature_tasks import acquire_shard
from flows.train_eval import train_eval
from hscmae.checkpoint import checkpoint_dir
from hscmae.embeddings import embed_shard, load_embedder, read_embeddings, run_method_config
from hscmae.experiment import ExperimentConfig, run_experiment
from pipeline.datasets.demo_videos import LABELS_FILE, DemoConfig, write_demo
from pipeline.datasets.folder import SplitConfig, build_folder_manifest
from pipeline.datasets.schema import write_manifest
from pipeline.features.build import AcquireJob
from pipeline.features.shards import load_feature_set, read_shard
from pipeline.io.digest import sha256_file
from pipeline.media.acquire import AcquireConfig
from pipeline.media.segment import ClipJob, SegmentConfig, segment_clip
from pipeline.vocab import RANDOM_WEIGHTS
from prefect_stack import artifacts, latest, task_states, wait_final

CLIPS, SECONDS, PER_SHARD = 32, 1.5, 8  # 4 shards of 8 clips, plus a shard holding the two bad rows
RANDOM = ExtractConfig(audio_weights=RANDOM_WEIGHTS, visual_weights=RANDOM_WEIGHTS)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo set's manifest, plus a row whose file is missing and one whose file is not a video."""
    folder = tmp_path_factory.mktemp("demo")
    # the demo's own split, no val (here 20 train, 12 test): the training runs carve val from train
    write_demo(folder, CLIPS, config=DemoConfig(seconds=SECONDS, test_fraction=0.2, val_fraction=0.1), workers=1)
    frame = build_folder_manifest(folder / LABELS_FILE, dataset="demo", times="event",
                                  splitting=SplitConfig(val_fraction=0.0)).frame
    (folder / "corrupt.mp4").write_bytes(b"not a video")
    bad = frame.iloc[[0, 0]].assign(clip_id=["gone", "corrupt"], source=["gone.mp4", "corrupt.mp4"])
    path = folder / "manifest.parquet"
    write_manifest(pd.concat([frame, bad], ignore_index=True), path)
    return path


def _run(out: Path, manifest: Path, **options: object) -> State:
    """build-features in this process; returns the final state."""
    return build_features(manifest=manifest, out=out, clips_per_shard=PER_SHARD, extract=options.pop("extract", RANDOM),
                          return_state=True, **options)


def _shard_bytes(shards: Path) -> dict[str, str]:
    """sha256 of each shard's bytes, by file name (a mismatch reports short digests, not megabytes)."""
    return {p.name: sha256_file(p) for p in sorted(shards.glob("*.parquet"))}


@pytest.fixture(scope="module")
def first(stack: dict[str, str], manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, State]:
    """The first build-features run of the module: its output root and its final state."""
    out = tmp_path_factory.mktemp("features")
    state = _run(out, manifest)
    return out, state


@pytest.mark.slow
def test_build_features_completes_with_shards_matching_the_stage_functions(first, manifest: Path,
                                                                          tmp_path: Path) -> None:
    out, state = first
    assert state.is_completed(), state
    outcome = state.result()
    states = task_states(state.state_details.flow_run_id, 10)
    assert states["acquire-shard"] == Counter(Completed=5) and states["extract-shard"] == Counter(Completed=5)
    assert (outcome.asked, outcome.obtained, outcome.extracted) == (CLIPS + 2, CLIPS + 1, CLIPS)
    assert outcome.failures_by_kind == {"missing": 1, "undecodable": 1}

    # the reference: the stage functions called directly, all clips in one go, no Prefect; the clip jobs written
    # out here: every file is read in place (local offset 0), so each clip is cut where the manifest says
    frame = pd.read_parquet(manifest)
    jobs = [ClipJob(clip_id=r.clip_id, label=r.label, label_id=int(r.label_id), split=r.split,
                    load=partial(segment_clip, str(manifest.parent / r.source), r.clip_id, r.clip_start_s,
                                 r.clip_end_s, SegmentConfig()))
            for r in frame.itertuples(index=False) if r.clip_id != "gone"]  # "gone" has no file to cut
    reference = extract_features(jobs, tmp_path / "ref", dataclasses.replace(RANDOM, clips_per_shard=100),
                                 extra_meta={"dataset": "demo"})
    expected = load_feature_set(reference.shards)
    got = load_feature_set(outcome.shards)
    assert list(got.clip_id) == list(expected.clip_id) == list(frame["clip_id"][:CLIPS])
    assert list(got.split) == list(frame["split"][:CLIPS]) and list(got.label) == list(frame["label"][:CLIPS])
    assert got.meta == expected.meta and got.meta["audio"]["weights"] == RANDOM_WEIGHTS
    for name in ("audio", "visual"):
        for a, b in zip(getattr(got, name), getattr(expected, name)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert sorted(f.kind for f in reference.failures) == ["undecodable"]  # "gone" never reached extraction


def test_build_features_artifacts(first) -> None:
    out, state = first
    found = artifacts(state.state_details.flow_run_id)
    assert found["build-features-progress"].data == 100.0
    with get_client(sync_client=True) as client:  # one progress artifact, not a 0 % one beside it
        progress = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["build-features-progress"])))
    assert [a.data for a in progress] == [100.0]
    table = json.loads(found["build-features-failures"].data)
    assert sorted((row["clip_id"], row["stage"], row["kind"]) for row in table) == [
        ("corrupt", "segment", "undecodable"), ("gone", "acquire", "missing")]
    summary = found["build-features-summary"].data
    for line in (f"| asked for | {CLIPS + 2} |", f"| obtained | {CLIPS + 1} |", f"| extracted | {CLIPS} |",
                 "| failed | 2 |", "| missing | 1 |", "| undecodable | 1 |", "Random extractor weights"):
        assert line in summary
    shards = state.result().shards
    assert shards.resolve().as_uri() in found["build-features-shards"].data


def test_second_run_is_cached_and_does_no_work(first, manifest: Path) -> None:
    out, state = first
    shards = state.result().shards
    before = {p: p.stat().st_mtime_ns for p in shards.glob("*.parquet")}
    again = _run(out, manifest)
    assert again.is_completed()
    states = task_states(again.state_details.flow_run_id, 10)
    assert states["acquire-shard"] == Counter(Cached=5) and states["extract-shard"] == Counter(Cached=5)
    assert again.result().shards == shards and again.result().extracted == CLIPS
    assert {p: p.stat().st_mtime_ns for p in shards.glob("*.parquet")} == before


def test_changed_extractor_config_recomputes_only_extraction(first, manifest: Path) -> None:
    out, state = first
    changed = _run(out, manifest, extract=dataclasses.replace(RANDOM, seed=1))
    states = task_states(changed.state_details.flow_run_id, 10)
    assert states["acquire-shard"] == Counter(Cached=5) and states["extract-shard"] == Counter(Completed=5)
    new, old = load_feature_set(changed.result().shards), load_feature_set(state.result().shards)
    assert changed.result().shards.parent != state.result().shards.parent  # lands beside, not over
    assert list(new.clip_id) == list(old.clip_id) and not np.allclose(new.visual[0], old.visual[0])


@pytest.fixture(scope="module")
def trained(first, tmp_path_factory: pytest.TempPathFactory) -> tuple[ExperimentConfig, State]:
    """train-eval on the first build's shards (hscmae, CLIP, linear CCA; one seed, 2 epochs): its config and state."""
    config = ExperimentConfig(shards=str(first[1].result().shards), methods=["hscmae", "clip", "linear-cca"],
                              seeds=[0], epochs=2, val_fraction=0.25,  # one val clip per class
                              runs_root=str(tmp_path_factory.mktemp("trained") / "runs"))
    return config, train_eval(config, return_state=True)


def test_train_eval_matches_the_plain_experiment_and_is_cached(trained, tmp_path: Path) -> None:
    config, state = trained
    assert state.is_completed(), state
    outcome = state.result()
    flow_run_id = state.state_details.flow_run_id
    states = task_states(flow_run_id, 5)
    assert states["hscmae"] == states["clip"] == states["linear-cca"] == Counter(Completed=1)

    # the same experiment without Prefect gives the same numbers
    plain = run_experiment(dataclasses.replace(config, run_dir=str(tmp_path / "plain")), progress=False)
    got = json.loads((outcome.run_dir / "metrics.json").read_text())["aggregate"]
    want = json.loads((plain / "metrics.json").read_text())["aggregate"]
    assert got.keys() == want.keys() == {"hscmae", "clip", "linear-cca"}
    for method in got:
        for metric, stats in want[method].items():
            assert got[method][metric]["mean"] == pytest.approx(stats["mean"], abs=1e-6), (method, metric)

    found = artifacts(flow_run_id)
    table = (outcome.run_dir / "results.md").read_text()
    assert table in found["train-eval-results"].data and "RANDOM WEIGHTS" in table
    assert (outcome.run_dir / "retrieval.html").resolve().as_uri() in found["train-eval-results"].data
    links = found["train-eval-files"].data
    for name in ("loss_curves.png", "pr_curves.png"):
        plot = outcome.run_dir / "plots" / name
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.resolve().as_uri() in links
    assert list((outcome.run_dir / "checkpoints").glob("*/best.safetensors"))

    again = train_eval(config, return_state=True)
    states = task_states(again.state_details.flow_run_id, 5)
    assert states["hscmae"] == states["clip"] == states["linear-cca"] == Counter(Cached=1)
    assert states["summarise"] == Counter(Cached=1)
    assert again.result().table == outcome.table

    # data that cannot be prepared ends the run with that reason, not "Run is in PENDING state" from each run
    failed = train_eval(dataclasses.replace(config, val_fraction=0.05), return_state=True)
    assert failed.is_failed() and "ValueError: cannot stratify" in failed.message, failed.message


def test_embed_command_line_writes_the_runs_embeddings_and_is_cached(stack: dict[str, str], trained, first,
                                                                    tmp_path: Path) -> None:
    """``python -m flows.embed`` on the run's feature shards: one embedding shard per feature shard, equal to
    the library's ``embed_shard`` with the run's selected model; the same flow again is Cached."""
    config, state = trained
    run_dir, shards = state.result().run_dir, first[1].result().shards
    command = [sys.executable, "-m", "flows.embed", "--run", str(run_dir), "--features", str(shards),
               "--out", str(tmp_path / "emb")]
    done = subprocess.run(command, env=stack, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 0 and f"{CLIPS} clips embedded by hscmae seed 0" in said, said[-3000:]
    assert "shard tasks {'Completed': 4}" in said
    features = load_feature_set(shards)
    embedder = load_embedder(run_method_config(run_dir, "hscmae"), checkpoint_dir(run_dir, "hscmae", 0),
                             dict(zip(("audio", "visual"), features.dims)), seed=0)
    for i, shard in enumerate(sorted(shards.glob("*.parquet"))):
        embed_shard(embedder, shard, tmp_path / "ref" / f"embeddings-{i:05d}.parquet")
    got, want = read_embeddings(tmp_path / "emb"), read_embeddings(tmp_path / "ref")
    assert list(got.clip_id) == list(want.clip_id) == list(features.clip_id)
    np.testing.assert_array_equal(got.audio, want.audio)
    np.testing.assert_array_equal(got.visual, want.visual)
    again = embed(run=run_dir, features=shards, out=tmp_path / "emb")  # the flow the command ran, here
    assert again.task_states == {"Cached": 4} and again.clips == CLIPS


def test_failed_runs_count_as_done_in_train_eval_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """One failed method x seed still brings the progress to 100 % and is named in its description."""
    import flows.train_eval as train_eval_module
    from hscmae.experiment import MethodResult

    updates: list[tuple[int, str]] = []

    class Recorder:
        def __init__(self, total: int, **_: object) -> None:
            self.total = total

        def __enter__(self) -> "Recorder":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, done: int, text: str) -> None:
            updates.append((done, text))

    class Future:
        def __init__(self, result: object | None) -> None:
            self.value = result
            self.state = State(type="FAILED" if result is None else "COMPLETED")

        def result(self) -> object:
            return self.value

    fields = {f.name: None for f in dataclasses.fields(MethodResult)}
    ok = MethodResult(**{**fields, "method": "clip", "seed": 0, "val_score": 0.5, "best_epoch": 0, "metrics": {},
                         "seconds": 1.0})
    monkeypatch.setattr(train_eval_module, "Progress", Recorder)
    monkeypatch.setattr(train_eval_module, "as_completed", iter)
    monkeypatch.setattr(train_eval_module, "create_table_artifact", lambda *a, **k: None)
    train_eval_module.watch_runs([Future(ok), Future(None)])
    assert updates[-1][0] == 2 and updates[-1][1].startswith("2 of 2 method x seed done (1 failed)")
    assert "clip seed 0" in updates[-1][1]


def test_acquisition_retries_transient_failures(stack: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pd.DataFrame({"clip_id": ["a"], "source_kind": ["youtube"], "source": ["abcdefghijk"]})
    outcomes = iter(["network_error", "network_error", "downloaded"])
    calls = []

    def flaky(frame: pd.DataFrame, config: AcquireConfig) -> pd.DataFrame:
        calls.append(config.cache_dir)
        return pd.DataFrame({"clip_id": ["a"], "outcome": [next(outcomes, "network_error")], "message": ["timed out"],
                             "path": [""], "local_start_s": [0.0]})

    assert acquire_shard.retries == 3 and acquire_shard.retry_delay_seconds == [10, 20, 40]  # exponential backoff
    monkeypatch.setattr("flows.feature_tasks.acquire", flaky)
    job = AcquireJob(key="k", index=0, rows=rows, config=AcquireConfig(cache_dir=tmp_path), lock=tmp_path / "a.lock")
    quick = acquire_shard.with_options(retry_delay_seconds=0, cache_policy=NO_CACHE, persist_result=False)

    @flow(name="acquire-once")
    def acquire_once() -> pd.DataFrame:
        return quick(job)

    assert list(acquire_once()["outcome"]) == ["downloaded"] and len(calls) == 3
    calls.clear()  # never recovers: after the last retry the outcome is returned, to become a failure record
    assert list(acquire_once()["outcome"]) == ["network_error"] and len(calls) == 4


@pytest.mark.slow
def test_dask_runner_gives_the_same_shards(first, manifest: Path, tmp_path: Path) -> None:
    """Shards extracted in a Dask worker process equal the thread runner's. One worker: that processes sharing
    a feature set build the same shards is the concurrent runs' test."""
    runner = task_runner("dask", workers=1)
    state = build_features.with_options(task_runner=runner)(
        manifest=manifest, out=tmp_path, clips_per_shard=PER_SHARD, extract=RANDOM, return_state=True)
    assert state.is_completed(), state
    got, want = load_feature_set(state.result().shards), load_feature_set(first[1].result().shards)
    assert list(got.clip_id) == list(want.clip_id) and got.meta == want.meta
    for name in ("audio", "visual"):
        for a, b in zip(getattr(got, name), getattr(want, name)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _cli(manifest: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "flows.build_features", "--manifest", str(manifest), "--out", str(out),
            "--clips-per-shard", str(PER_SHARD), "--weights", RANDOM_WEIGHTS]


def _computed(output: str) -> int:
    """Shards a CLI run extracted itself: Completed tasks that did not find their shard done on disk."""
    found = re.search(r"shard tasks (\{.*?\}), reused from disk (\d+)", output)
    assert found, output[-3000:]
    return json.loads(found.group(1)).get("Completed", 0) - int(found.group(2))


@pytest.mark.slow
def test_a_killed_run_is_resumed_by_two_concurrent_runs_to_identical_shards(stack: dict[str, str], first,
                                                                            manifest: Path, tmp_path: Path) -> None:
    """kill -9 after the first shard is finished, then run the same command twice at once: the two share
    what is left, each shard extracted once by one of them, none redone, and the shards are the first build's."""
    run = subprocess.Popen(_cli(manifest, tmp_path), env=stack, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    # a shard is finished once its record exists (written last, after the shard and its failures): kill right then
    while not list(tmp_path.glob("features/*/done/*.json")) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    root = next(tmp_path.glob("features/*"))
    finished = len(list((root / "done").glob("*.json")))
    assert 1 <= finished < 5
    for path in (root / "shards").glob("*.parquet"):  # whatever is visible is whole
        read_shard(path)
    runs = [subprocess.Popen(_cli(manifest, tmp_path), env=stack, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert sum(_computed(o) for o in outputs) == 5 - finished  # each left shard once, by one of the two
    assert _shard_bytes(root / "shards") == _shard_bytes(first[1].result().shards)


def test_moved_dataset_keeps_the_shards_built_before(first, manifest: Path, tmp_path: Path) -> None:
    """the data folder moves and build-features runs again with the OLD manifest. Every clip is
    missing, yet every shard built before stays byte-identical, and the run says what it kept and why; with the
    manifest rebuilt where the data now is, the failure records name the paths of now."""
    out = tmp_path / "out"  # a copy of the module's first build (shards, records, cache): other tests keep theirs
    shutil.copytree(first[0], out, symlinks=True)
    data, moved = tmp_path / "data", tmp_path / "moved"
    shutil.copytree(manifest.parent, data, symlinks=True)
    frame = pd.read_parquet(manifest)
    frame.attrs["root"] = str(data)
    old_manifest = write_manifest(frame, tmp_path / "old.parquet")

    def failure_messages(shards: Path) -> list[str]:
        return sorted(pd.read_parquet(shards.parent / "failures.parquet")["message"])

    here = _run(out, old_manifest).result()  # content-only keys: the copied shards are found finished
    before = _shard_bytes(here.shards)
    assert before == _shard_bytes(first[1].result().shards) and len(before) == 4
    # the cached shard outcome of the first build names the first build's files: reported where they are now
    messages = failure_messages(here.shards)
    assert [m.split(": ")[0] for m in messages] == [str(data / "corrupt.mp4"), "gone.mp4"]
    assert str(data / "gone.mp4") in messages[1] and not any(str(manifest.parent) in m for m in messages)

    shutil.move(data, moved)
    state = _run(out, old_manifest)
    outcome = state.result()
    assert state.is_completed() and outcome.shards == here.shards
    assert _shard_bytes(outcome.shards) == before  # nothing deleted, nothing rewritten
    assert (outcome.obtained, outcome.extracted, outcome.failures_by_kind) == (0, CLIPS, {"missing": CLIPS + 2})
    assert (outcome.kept_shards, outcome.kept_clips, outcome.reused_on_disk) == (4, {"missing": CLIPS}, 4)
    said = f"kept 4 shards built earlier as they are: {CLIPS} of their clips cannot be acquired now (missing {CLIPS})"
    assert said in outcome.log_text() and said in artifacts(state.state_details.flow_run_id)[
        "build-features-summary"].data
    progress = latest(state.state_details.flow_run_id, "build-features-progress")
    assert progress.data == 100.0 and "kept 4 built earlier (sources not available now)" in progress.description

    frame.attrs["root"] = str(moved)
    rebuilt = _run(out, write_manifest(frame, tmp_path / "new.parquet")).result()
    assert _shard_bytes(rebuilt.shards) == before and rebuilt.kept_shards == 0 and rebuilt.extracted == CLIPS
    messages = failure_messages(rebuilt.shards)
    assert [m.split(": ")[0] for m in messages] == [str(moved / "corrupt.mp4"), "gone.mp4"]
    assert str(moved / "gone.mp4") in messages[1] and not any(str(data) + "/" in m for m in messages)


def test_a_source_swapped_for_an_outward_symlink_is_refused_though_acquisition_was_cached(first, manifest: Path,
                                                                                          tmp_path: Path) -> None:
    """after a build, a source inside the dataset root is moved out and a symlink to it put in its place
    (the same bytes, so the same content keys). Acquisition was Cached and the file outside the root was read;
    now its shard's acquisition runs again and refuses it (``outside_root``), as on a fresh output root."""
    out, data = tmp_path / "out", tmp_path / "data"
    shutil.copytree(first[0], out, symlinks=True)
    shutil.copytree(manifest.parent, data, symlinks=True)
    frame = pd.read_parquet(manifest)
    frame.attrs["root"] = str(data)
    here = write_manifest(frame, tmp_path / "m.parquet")
    _run(out, here)  # acquisition follows the data to its new place, once
    clip, outside = frame.iloc[0], tmp_path / "outside.mp4"
    shutil.move(data / clip.source, outside)
    (data / clip.source).symlink_to(outside)
    swapped = _run(out, here)
    states = task_states(swapped.state_details.flow_run_id, 10)
    assert states["acquire-shard"] == Counter(Cached=4, Completed=1)
    failures = pd.read_parquet(swapped.result().shards.parent / "failures.parquet")
    assert failures.loc[failures["kind"] == "outside_root", "clip_id"].tolist() == [clip.clip_id]
    assert swapped.result().failures_by_kind["outside_root"] == 1


@pytest.mark.slow
def test_cache_follows_file_content_not_paths(first, manifest: Path, tmp_path: Path) -> None:
    """Moved data re-acquires (cheap) but its shards stay Cached; a file fixed or added in place, or a damaged
    shard, recomputes exactly its shard."""
    out, state = first
    before = _shard_bytes(state.result().shards)
    copied = tmp_path / "copied"
    shutil.copytree(manifest.parent, copied, symlinks=True)
    frame = pd.read_parquet(manifest)
    frame.attrs["root"] = str(copied)
    write_manifest(frame, copied / "manifest.parquet")
    again = _run(out, copied / "manifest.parquet")
    assert again.result().shards == state.result().shards  # the feature set does not depend on where data lives
    states = task_states(again.state_details.flow_run_id, 10)
    # acquisition's result holds paths, so it follows the new location; extraction is content-only
    assert states["acquire-shard"] == Counter(Completed=5) and states["extract-shard"] == Counter(Cached=5)
    assert _shard_bytes(again.result().shards) == before

    # the data moves away (the copy's paths are gone) and the extractor changes: every clip is still
    # extracted from the new place, never failed as undecodable through a cached table of the old paths
    moved = tmp_path / "moved"
    shutil.move(copied, moved)
    frame.attrs["root"] = str(moved)
    write_manifest(frame, moved / "manifest.parquet")
    changed = _run(out, moved / "manifest.parquet",
                   extract=dataclasses.replace(RANDOM, seed=2))
    states = task_states(changed.state_details.flow_run_id, 10)
    assert states["acquire-shard"] == Counter(Completed=5) and states["extract-shard"] == Counter(Completed=5)
    assert changed.result().extracted == CLIPS
    assert sorted(changed.result().failures_by_kind.items()) == [("missing", 1), ("undecodable", 1)]

    good = sorted(moved.glob("*/*.mp4"))[0]
    shutil.copyfile(good, moved / "corrupt.mp4")  # fixed in place
    shutil.copyfile(good, moved / "gone.mp4")  # the missing file added
    fixed = _run(out, moved / "manifest.parquet")
    states = task_states(fixed.state_details.flow_run_id, 10)
    assert states["acquire-shard"] == Counter(Cached=4, Completed=1)
    assert states["extract-shard"] == Counter(Cached=4, Completed=1)
    assert fixed.result().extracted == CLIPS + 2 and fixed.result().failures_by_kind == {}
    assert fixed.message.startswith(f"0 of {CLIPS + 2} clips failed")
    after = _shard_bytes(fixed.result().shards)
    assert {k: v for k, v in after.items() if k != "shard-00004.parquet"} == {
        k: v for k, v in before.items() if k != "shard-00004.parquet"}

    damaged = fixed.result().shards / "shard-00001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # truncated on disk
    rebuilt = _run(out, moved / "manifest.parquet")
    states = task_states(rebuilt.state_details.flow_run_id, 10)
    assert states["extract-shard"] == Counter(Cached=4, Completed=1)
    assert _shard_bytes(rebuilt.result().shards) == after


def test_changed_zip_recomputes_only_the_shards_of_its_changed_members(stack: dict[str, str], manifest: Path,
                                                                        tmp_path: Path) -> None:
    """Archive rows are keyed by their zip member's bytes, not the whole zip's: one clip replaced in the
    zip recomputes its shard only."""
    folder = manifest.parent
    frame = pd.read_parquet(manifest).iloc[:3].reset_index(drop=True)
    archived = frame.iloc[:2].assign(source_kind="archive")  # two clips, one shard each
    write_manifest(archived, tmp_path / "archive.parquet")
    bundle = tmp_path / "clips.zip"

    def pack(second_clip: str) -> None:
        with zipfile.ZipFile(bundle, "w") as z:
            z.write(folder / archived.at[0, "source"], archived.at[0, "source"])
            z.write(folder / second_clip, archived.at[1, "source"])

    def run() -> State:
        return build_features(manifest=tmp_path / "archive.parquet", out=tmp_path / "out", clips_per_shard=1,
                              extract=RANDOM, acquire_config=AcquireConfig(archive=bundle), return_state=True)

    pack(archived.at[1, "source"])
    first = run()
    assert task_states(first.state_details.flow_run_id, 4)["extract-shard"] == Counter(Completed=2)
    before = _shard_bytes(first.result().shards)
    pack(frame.at[2, "source"])  # the second member's bytes replaced by another clip
    second = run()
    assert second.result().shards == first.result().shards and second.result().extracted == 2
    states = task_states(second.state_details.flow_run_id, 4)
    assert states["acquire-shard"] == Counter(Cached=1, Completed=1)
    assert states["extract-shard"] == Counter(Cached=1, Completed=1)
    after = _shard_bytes(second.result().shards)
    assert after["shard-00000.parquet"] == before["shard-00000.parquet"]
    assert after["shard-00001.parquet"] != before["shard-00001.parquet"]


def test_build_features_fails_when_no_clip_is_extracted(stack: dict[str, str], manifest: Path, tmp_path: Path) -> None:
    frame = pd.read_parquet(manifest)
    nothing = frame.iloc[[-2]].reset_index(drop=True)  # the row whose file is missing
    write_manifest(nothing, tmp_path / "nothing.parquet")
    state = _run(tmp_path / "out", tmp_path / "nothing.parquet")
    assert state.is_failed() and state.message.startswith('no clip was extracted: 1 of 1 clips failed ({"missing": 1})')


@pytest.mark.slow
def test_a_build_where_every_clip_fails_ends_with_its_summary_and_one_error_line(stack: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    """the command line said so with a 59-line FailedRun traceback; now the run's summary, then one
    ``error:`` line with the state's message, exit status 1 (``--debug``: the traceback)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("x.mp4", "y.mp4"):
        (data / name).write_bytes(b"not a video")
    (data / "labels.csv").write_text("path,label,split\nx.mp4,cat,train\ny.mp4,dog,test\n")
    write_manifest(build_folder_manifest(data / "labels.csv", splitting=SplitConfig(val_fraction=0.0)).frame,
                   tmp_path / "m.parquet")
    done = subprocess.run(_cli(tmp_path / "m.parquet", tmp_path / "out"), env=stack, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    failures = next((tmp_path / "out").glob("features/*/failures.parquet"))
    assert done.returncode == 1 and "Traceback" not in said, said[-3000:]
    assert "0/2 clips extracted into" in said  # the summary
    assert [line for line in said.splitlines() if line.startswith("error:")] == [
        f'error: build-features ended Failed: no clip was extracted: 2 of 2 clips failed ({{"undecodable": 2}}); '
        f'see {failures}'], said[-3000:]


@pytest.mark.slow
def test_build_features_deployment_runs_on_the_worker(stack: dict[str, str], tmp_path: Path) -> None:
    params = ["--param", "demo_clips=10", "--param", f"demo={json.dumps({'seconds': 2.0})}",
              "--param", f"out={json.dumps(str(tmp_path))}"]
    done = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "build-features/demo", *params,
                           "--watch", "--watch-timeout", "300"], env=stack, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=330)
    assert done.returncode == 0 and "Completed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    shards = load_feature_set(next(tmp_path.glob("features/*/shards")))
    assert len(shards) == 10 and shards.meta["visual"]["weights"] == RANDOM_WEIGHTS


@pytest.mark.slow
def test_deployments_progress_plot_links_refusal_and_cancel_on_down(stack: dict[str, str], first) -> None:
    """Last in the module: it stops the stack itself, with a build-features run in flight."""
    with get_client(sync_client=True) as client:
        features = client.read_deployment_by_name("build-features/demo")
        training = client.read_deployment_by_name("train-eval/demo")
        of_these = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[features.id, training.id]))
        before = len(client.read_flow_runs(flow_run_filter=of_these))
        # a bad value is refused by the server before any run exists
        for deployment, parameters in ((features, {"demo_clips": -5}), (features, {"clips_per_shard": 0}),
                                       (features, {"extract": {"visual_model": "nope"}}),
                                       (training, {"config": {"methods": ["nope"]}})):
            with pytest.raises(Exception, match="409|[Vv]alidation"):
                client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        assert len(client.read_flow_runs(flow_run_filter=of_these)) == before

        config = {"shards": str(first[1].result().shards), "methods": ["clip"], "seeds": [0], "epochs": 1,
                  "val_fraction": 0.25}
        run = client.create_flow_run_from_deployment(training.id, parameters={"config": config})
    state = wait_final(run.id)
    assert state.is_completed(), state
    progress = latest(run.id, "train-eval-progress")
    assert progress.data == 100.0 and progress.description.startswith("1 of 1 method x seed done")
    assert "clip seed 0" in progress.description

    # the plot opens from the UI: its link points at the file server, which returns the file's bytes
    outputs, base = Path(stack["HSCMAE_OUTPUTS"]), f"http://127.0.0.1:{stack['FILES_PORT']}/"
    links = re.findall(r"\((http://[^)]+)\)", latest(run.id, "train-eval-files").data)
    plot = next(link for link in links if link.endswith("/plots/loss_curves.png"))
    assert plot.startswith(base + "runs/run-")
    with urllib.request.urlopen(plot, timeout=10) as response:
        got = response.read()
    assert got == (outputs / plot.removeprefix(base)).read_bytes() and got[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(urllib.error.HTTPError, match="404"):  # nothing outside the output root
        urllib.request.urlopen(base + "..%2f..%2f..%2fetc/passwd", timeout=10)

    # `down` with a run in flight leaves it Cancelled, not Running forever
    with get_client(sync_client=True) as client:
        busy = client.create_flow_run_from_deployment(features.id, parameters={"demo_clips": 400})
        deadline = time.monotonic() + 180
        while not client.read_flow_run(busy.id).state.is_running():
            assert time.monotonic() < deadline, client.read_flow_run(busy.id).state
            time.sleep(0.5)
    down = subprocess.run([sys.executable, "-m", "flows.local", "down"], env=stack, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    # (a run killed earlier in the module is cancelled too: it was left "Running")
    assert down.returncode == 0 and busy.name in down.stdout.split("in flight: ")[1], down.stdout + down.stderr
    with sqlite3.connect(Path(stack["PREFECT_HOME"]) / "prefect.db") as db:  # the server is gone: read its db
        (state_type,) = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (busy.id.hex,)).fetchone() or \
            db.execute("SELECT state_type FROM flow_run WHERE id = ?", (str(busy.id),)).fetchone()
    assert state_type == "CANCELLED"
