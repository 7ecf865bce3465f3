"""Batched extraction into shards: equal to per-clip computation, failures carried, bounded prefetch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.config import ExtractConfig, differing_extractors, extract_config_of
from extractors.extract import ClipJob, Extractors, extract_features, extract_one_shard, prefetch
from pipeline.features.failures import Failure
from pipeline.media.segment import Segment, SegmentConfig, segment_clip
from pipeline.features.shards import load_feature_set, read_shard, uses_random_weights
from pipeline.vocab import RANDOM_WEIGHTS

CONFIG = ExtractConfig(audio_weights=RANDOM_WEIGHTS, visual_weights=RANDOM_WEIGHTS, clips_per_shard=2, batch_clips=3,
                       max_batch=4)


@pytest.fixture(scope="module")
def models() -> Extractors:
    return Extractors(CONFIG)


def make_segment(clip_id: str, seconds: int, seed: int) -> Segment:
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * 16000) / 16000
    audio = (0.2 * np.sin(2 * np.pi * (300 + 100 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    frames = rng.integers(0, 256, size=(seconds, 48, 64, 3), dtype=np.uint8)
    return Segment(clip_id=clip_id, audio=audio, frames=frames, frame_times=np.arange(seconds) + 0.5)


class CountingLoader:
    """A job's load callable that counts its calls."""

    def __init__(self, result: Segment | Failure) -> None:
        self.result, self.calls = result, 0

    def __call__(self) -> Segment | Failure:
        self.calls += 1
        return self.result


def job(clip_id: str, result: Segment | Failure, split: str = "train") -> ClipJob:
    return ClipJob(clip_id=clip_id, label="bell", label_id=0, split=split, load=CountingLoader(result))


def one_clip_alone(models: Extractors, segment: Segment) -> tuple[np.ndarray, np.ndarray]:
    """The clip's features computed on its own, without batching."""
    with torch.inference_mode():
        examples, _ = models.audio.frontend.examples([torch.from_numpy(segment.audio)])
        return models.audio(examples).numpy(), models.visual(torch.from_numpy(segment.frames)).numpy()


def test_batched_shards_equal_per_clip_features(models: Extractors, tmp_path: Path) -> None:
    segments = [make_segment(f"clip{i}", seconds=1 + i % 2, seed=i) for i in range(5)]
    silent = Failure(clip_id="quiet", stage="segment", kind="silent", message="quiet.mp4: audio RMS 1e-05")
    jobs = [job(s.clip_id, s) for s in segments] + [job("quiet", silent)]
    result = extract_features(iter(jobs), tmp_path, CONFIG, extractors=models, extra_meta={"dataset": "test"})
    assert [p.name for p in result.shards] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert result.failures == [silent]  # carried through unchanged
    assert all(j.load.calls == 1 for j in jobs)  # each clip decoded once, never retried
    features = load_feature_set(tmp_path)
    assert list(features.clip_id) == [s.clip_id for s in segments]
    assert uses_random_weights(features.meta) and features.meta["dataset"] == "test"
    for segment, audio, visual in zip(segments, features.audio, features.visual):
        ref_audio, ref_visual = one_clip_alone(models, segment)
        assert audio.shape == (len(segment.frames), 128)  # whole seconds: one 0.96 s example each
        assert visual.shape == (len(segment.frames), 2048)
        np.testing.assert_allclose(audio, ref_audio, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(visual, ref_visual, rtol=1e-4, atol=1e-4)


def test_non_finite_short_and_duplicate_clips_are_failures_not_rows(models: Extractors, tmp_path: Path) -> None:
    good = make_segment("good", 2, seed=1)
    broken = make_segment("broken", 2, seed=2)
    broken.audio[5000] = np.nan
    short = make_segment("short", 1, seed=3)
    short.audio = short.audio[:15000]  # under one 0.96 s example
    jobs = [job("good", good), job("broken", broken), job("short", short), job("good", good)]
    result = extract_features(jobs, tmp_path, CONFIG, extractors=models)
    kinds = {(f.clip_id, f.kind) for f in result.failures}
    assert kinds == {("broken", "non_finite"), ("short", "too_short"), ("good", "duplicate_clip_id")}
    assert "audio features have" in next(f.message for f in result.failures if f.kind == "non_finite")
    assert list(load_feature_set(tmp_path).clip_id) == ["good"]


def test_bad_job_is_a_clear_error(models: Extractors, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'a/b'.*clip_id must match"):
        extract_features([job("a/b", make_segment("a", 1, 0))], tmp_path, CONFIG, extractors=models)
    with pytest.raises(ValueError, match="split 'dev'"):
        extract_features([job("a", make_segment("a", 1, 0), split="dev")], tmp_path, CONFIG, extractors=models)


def test_one_shard_file_through_a_scratch_folder(models: Extractors, tmp_path: Path) -> None:
    """All clips into the one file asked for (whatever clips_per_shard says); none extracted: no file, not a stale one."""
    shard, work = tmp_path / "shards" / "shard-00007.parquet", tmp_path / "work" / "shard-00007"
    (work / "leftover").mkdir(parents=True)  # a killed run's scratch
    segments = [make_segment(f"c{i}", seconds=1, seed=i) for i in range(3)]
    silent = Failure(clip_id="quiet", stage="segment", kind="silent", message="quiet.mp4: audio RMS 1e-05")
    failures = extract_one_shard([job(s.clip_id, s) for s in segments] + [job("quiet", silent)], shard, work, CONFIG,
                                 extractors=models, extra_meta={"dataset": "test"})
    clips, meta = read_shard(shard)
    assert [c.clip_id for c in clips] == ["c0", "c1", "c2"] and meta["dataset"] == "test" and failures == [silent]
    assert not work.exists() and sorted(p.name for p in shard.parent.iterdir()) == [shard.name]
    assert extract_one_shard([job("quiet", silent)], shard, work, CONFIG, extractors=models) == [silent]
    assert not shard.exists() and not work.exists()


def test_extract_config_remakes_a_shards_extractors(models: Extractors) -> None:
    meta = models.meta()  # random VGGish and ResNet-50
    assert extract_config_of(meta) == ExtractConfig(visual_model="resnet50", audio_weights=RANDOM_WEIGHTS,
                                                    visual_weights=RANDOM_WEIGHTS)
    published = {**meta, "visual": {**meta["visual"], "extractor": "vit_s16", "weights": "ab" * 32}}
    assert extract_config_of(published) == ExtractConfig(visual_model="vit_s16", audio_weights=RANDOM_WEIGHTS,
                                                         visual_weights=None)
    assert differing_extractors(published, meta) == ["visual"] and differing_extractors(meta, dict(meta)) == []


def test_prefetch_is_bounded_and_in_order() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def loader(i: int):
        def load() -> int:
            with lock:
                started.append(i)
            return i
        return load

    def jobs():
        for i in range(40):
            yield ClipJob(clip_id=f"c{i}", label="x", label_id=0, split="train", load=loader(i))

    seen = []
    for job_, value in prefetch(jobs(), workers=2, depth=5):
        # When clip k comes out, at most the next 5 clips have been submitted.
        assert len(started) <= value + 1 + 5
        seen.append(value)
    assert seen == list(range(40))


def test_real_demo_video(models: Extractors, tmp_path: Path) -> None:
    demo = pytest.importorskip("pipeline.datasets.demo_videos")
    labels = demo.write_demo(tmp_path / "demo", 2, config=demo.DemoConfig(seconds=3.0), workers=1)
    jobs = []
    for row in labels.itertuples():
        clip_id = Path(row.path).stem
        path = tmp_path / "demo" / row.path
        jobs.append(ClipJob(clip_id=clip_id, label=row.label, label_id=0, split=row.split,
                            load=lambda p=path, c=clip_id: segment_clip(p, c, 0.0, 3.0, SegmentConfig())))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    jobs.insert(1, ClipJob(clip_id="corrupt", label="bell", label_id=0, split="train",
                           load=lambda: segment_clip(corrupt, "corrupt", 0.0, 3.0, SegmentConfig())))
    result = extract_features(jobs, tmp_path / "features", CONFIG, extractors=models)
    assert [(f.clip_id, f.stage, f.kind) for f in result.failures] == [("corrupt", "segment", "undecodable")]
    features = load_feature_set(tmp_path / "features")
    assert len(features) == 2
    for audio, visual in zip(features.audio, features.visual):
        assert audio.shape == (3, 128) and visual.shape == (3, 2048)
        assert np.isfinite(audio).all() and np.isfinite(visual).all()
