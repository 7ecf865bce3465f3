"""Feature shard contract: round trip, metadata, and rejection of bad shards with file and clip named."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.features.shards import (
    META_KEY, ClipFeatures, ShardError, load_feature_set, read_shard, uses_random_weights,
    weights_summary, write_shard,
)

META = {
    "audio": {"extractor": "vggish", "version": "1", "params": {"sr": 16000}, "weights": "random"},
    "visual": {"extractor": "resnet50", "version": "1", "params": {}, "weights": "ab" * 32},
}


def _clip(i: int, seconds: int = 10, da: int = 4, dv: int = 6, split: str = "train") -> ClipFeatures:
    rng = np.random.default_rng(i)
    return ClipFeatures(
        clip_id=f"clip_{i}", label=f"class{i % 3}", label_id=i % 3, split=split,
        audio=rng.normal(size=(seconds, da)).astype(np.float32),
        visual=rng.normal(size=(seconds - 1, dv)).astype(np.float32),
    )


def test_round_trip_preserves_values_lengths_and_metadata(tmp_path):
    clips = [_clip(i, seconds=3 + i) for i in range(5)]
    write_shard(tmp_path / "s0.parquet", clips, META)
    got, meta = read_shard(tmp_path / "s0.parquet")
    assert meta == META
    for want, have in zip(clips, got):
        assert (have.clip_id, have.label, have.label_id, have.split) == (want.clip_id, want.label, want.label_id, want.split)
        np.testing.assert_array_equal(have.audio, want.audio)
        np.testing.assert_array_equal(have.visual, want.visual)
    table = pq.read_table(tmp_path / "s0.parquet")
    assert table.column("audio_seconds").to_pylist() == [3, 4, 5, 6, 7]
    assert table.column("visual_seconds").to_pylist() == [2, 3, 4, 5, 6]


def test_feature_set_pools_by_mean_over_seconds(tmp_path):
    clips = [_clip(i, seconds=2 + i) for i in range(4)]
    write_shard(tmp_path / "a.parquet", clips[:2], META)
    write_shard(tmp_path / "b.parquet", clips[2:], META)
    fs = load_feature_set(tmp_path)
    audio, visual = fs.pooled()
    np.testing.assert_allclose(audio, np.stack([c.audio.mean(0) for c in clips]), rtol=1e-6)
    np.testing.assert_allclose(visual, np.stack([c.visual.mean(0) for c in clips]), rtol=1e-6)
    assert list(fs.clip_id) == [c.clip_id for c in clips]
    assert fs.dims == (4, 6)
    sub = fs.subset(fs.label_id == 1)
    assert list(sub.clip_id) == ["clip_1"]


def test_weights_are_reported(tmp_path):
    assert uses_random_weights(META)
    assert weights_summary(META) == "audio vggish (random), visual resnet50 (sha256 abababab)"
    real = {m: {**v, "weights": "cd" * 32} for m, v in META.items()}
    assert not uses_random_weights(real)
    generated = {m: {**v, "weights": "none"} for m, v in META.items()}
    assert weights_summary(generated) == "audio vggish (none), visual resnet50 (none)"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: setattr(c, "audio", np.full((3, 4), np.nan, np.float32)), "audio has 12 non-finite values"),
        (lambda c: setattr(c, "visual", np.zeros((0, 6), np.float32)), "no visual features"),
        (lambda c: setattr(c, "label", None), "label is absent"),
        (lambda c: setattr(c, "clip_id", "../etc/passwd"), "clip_id must match"),
        (lambda c: setattr(c, "split", "dev"), "split 'dev'"),
    ],
)
def test_bad_clip_is_rejected_naming_file_row_and_clip_and_nothing_is_written(tmp_path, change, message):
    clips = [_clip(i) for i in range(3)]
    change(clips[2])
    path = tmp_path / "bad.parquet"
    with pytest.raises(ShardError, match=message) as err:
        write_shard(path, clips, META)
    assert str(path) in str(err.value) and "row 2" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_duplicate_ids_across_shards_are_rejected(tmp_path):
    write_shard(tmp_path / "a.parquet", [_clip(0), _clip(1)], META)
    write_shard(tmp_path / "b.parquet", [_clip(1)], META)
    with pytest.raises(ShardError, match=r"b\.parquet, row 0, clip 'clip_1': duplicate clip_id"):
        load_feature_set(tmp_path)


def test_shard_written_by_another_tool_is_validated_on_read(tmp_path):
    """A NaN inside a shard that bypassed write_shard is caught on read, naming the clip."""
    write_shard(tmp_path / "ok.parquet", [_clip(0), _clip(1)], META)
    table = pq.read_table(tmp_path / "ok.parquet")
    audio = table.column("audio").combine_chunks()
    values = audio.values.flatten().to_numpy().copy()
    values[-1] = np.inf  # last value of the last clip
    rows = pa.FixedSizeListArray.from_arrays(pa.array(values), 4)
    table = table.set_column(table.column_names.index("audio"), "audio", pa.ListArray.from_arrays(audio.offsets, rows))
    pq.write_table(table, tmp_path / "ok.parquet")
    with pytest.raises(ShardError, match=r"row 1, clip 'clip_1': audio has 1 non-finite values \(first at second 9\)"):
        read_shard(tmp_path / "ok.parquet")


def test_missing_columns_and_metadata_are_named(tmp_path):
    write_shard(tmp_path / "s.parquet", [_clip(0)], META)
    table = pq.read_table(tmp_path / "s.parquet")
    pq.write_table(table.drop(["label_id"]), tmp_path / "nolabel.parquet")
    with pytest.raises(ShardError, match=r"nolabel\.parquet: missing columns \['label_id'\]"):
        read_shard(tmp_path / "nolabel.parquet")
    meta = json.loads(table.schema.metadata[META_KEY])
    del meta["visual"]["weights"]
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), tmp_path / "nometa.parquet")
    with pytest.raises(ShardError, match=r"metadata for 'visual' lacks \['weights'\]"):
        read_shard(tmp_path / "nometa.parquet")
