"""Published feature files -> shards: AVE's h5 pair and the single-file layout, values checked with numpy."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.datasets.ave import build_ave_manifest
from pipeline.features.import_features import FeatureImportError, import_ave_features, import_single_file, main
from pipeline.features.shards import load_feature_set, uses_random_weights

LINES = ["Church bell&AAAAAAAAAAA&good&0&10", "Bark&BBBBBBBBBBB&good&2&5", "Bark&AAAAAAAAAAA&good&1&3",
         "Cat&CCCCCCCCCCC&good&0&0", "Bark&DDDDDDDDDDD&good&0&10", "Church bell&EEEEEEEEEEE&good&4&9",
         "Cat&FFFFFFFFFFF&good&3&4"]
SPLITS = {"train": LINES[:4], "val": LINES[4:5], "test": LINES[5:]}


@pytest.fixture
def ave(tmp_path) -> dict:
    """A 7-row AVE in the official layouts, with random features."""
    (tmp_path / "Annotations.txt").write_text("\n".join(LINES) + "\n")
    files = {}
    for split, lines in SPLITS.items():
        files[split] = tmp_path / f"{split}Set.txt"
        files[split].write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(len(LINES), 10, 128)).astype(np.float32)
    visual = rng.normal(size=(len(LINES), 10, 7, 7, 512)).astype(np.float32)
    for name, values in (("audio_feature.h5", audio), ("visual_feature.h5", visual)):
        with h5py.File(tmp_path / name, "w") as h5:
            h5["avadataset"] = values
    return {"dir": tmp_path, "annotations": tmp_path / "Annotations.txt", "splits": files, "audio": audio,
            "visual": visual, "audio_h5": tmp_path / "audio_feature.h5", "visual_h5": tmp_path / "visual_feature.h5"}


def _import(ave: dict, manifest, out: Path, **kwargs) -> list[Path]:
    return import_ave_features(ave["audio_h5"], ave["visual_h5"], manifest, ave["annotations"], out, **kwargs)


def test_ave_features_round_trip_with_pooled_visual(ave, tmp_path):
    manifest = build_ave_manifest(ave["annotations"], ave["splits"]).frame
    paths = _import(ave, manifest, tmp_path / "shards", shard_size=3, read_chunk=2)
    assert [p.name for p in paths] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    features = load_feature_set(tmp_path / "shards")
    assert features.clip_id.tolist() == manifest["clip_id"].tolist()
    assert features.split.tolist() == manifest["split"].tolist()
    assert features.label_id.tolist() == manifest["label_id"].tolist()
    for i in range(len(LINES)):
        np.testing.assert_array_equal(features.audio[i], ave["audio"][i])
        np.testing.assert_allclose(features.visual[i], ave["visual"][i].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    meta = features.meta
    assert meta["audio"]["weights"] == hashlib.sha256(ave["audio_h5"].read_bytes()).hexdigest()
    assert meta["visual"]["weights"] == hashlib.sha256(ave["visual_h5"].read_bytes()).hexdigest()
    assert meta["visual"]["params"]["source_file"] == "visual_feature.h5" and not uses_random_weights(meta)
    assert "published" in meta["audio"]["extractor"]


def test_ave_subset_manifest_picks_the_right_rows(ave, tmp_path):
    manifest = build_ave_manifest(ave["annotations"], ave["splits"], classes=["Cat", "Bark"]).frame
    _import(ave, manifest, tmp_path / "shards", read_chunk=3)
    features = load_feature_set(tmp_path / "shards")
    rows = [i for i, line in enumerate(LINES) if line.split("&")[0] in ("Cat", "Bark")]
    assert features.label.tolist() == [LINES[i].split("&")[0] for i in rows]
    assert features.label_id.tolist() == [{"Bark": 0, "Cat": 1}[LINES[i].split("&")[0]] for i in rows]
    for k, i in enumerate(rows):
        np.testing.assert_array_equal(features.audio[k], ave["audio"][i])


def _leaves_nothing(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_ave_nan_rejected_naming_file_row_and_clip(ave, tmp_path):
    with h5py.File(ave["visual_h5"], "r+") as h5:
        h5["avadataset"][5, 3, 2, 2, 7] = np.nan
    manifest = build_ave_manifest(ave["annotations"], ave["splits"]).frame
    out = tmp_path / "shards"
    with pytest.raises(FeatureImportError, match=re.escape(f"{ave['visual_h5']}, row 5 (clip 'EEEEEEEEEEE_church_bell'): non-finite")):
        _import(ave, manifest, out, shard_size=2, read_chunk=2)  # two shards were already staged
    _leaves_nothing(out)


def test_ave_constant_row_in_a_later_chunk_names_its_true_row(ave, tmp_path, capsys):
    with h5py.File(ave["audio_h5"], "r+") as h5:
        h5["avadataset"][5] = 0.25  # chunk [4, 6) at read_chunk=2: index 1 within its chunk, row 5 of the file
    manifest = build_ave_manifest(ave["annotations"], ave["splits"]).frame
    out = tmp_path / "shards"
    with pytest.raises(FeatureImportError, match=re.escape(
            f"{ave['audio_h5']}, row 5 (clip 'EEEEEEEEEEE_church_bell'): every value is 0.25 (--constant-rows keep")):
        _import(ave, manifest, out, shard_size=2, read_chunk=2)
    _leaves_nothing(out)
    subset = build_ave_manifest(ave["annotations"], ave["splits"], classes=["Church bell", "Cat"]).frame
    _import(ave, subset, out, read_chunk=3, constant_rows="keep")  # chunk [3, 6) keeps rows 3 and 5
    assert f"{ave['audio_h5']}, row 5 (clip 'EEEEEEEEEEE_church_bell'): every value is 0.25" in capsys.readouterr().err


@pytest.mark.parametrize("name, shape, problem", [
    ("audio_feature.h5", (7, 10, 64), "has shape (7, 10, 64), expected (7, 10, 128)"),
    ("visual_feature.h5", (6, 10, 7, 7, 512), "has shape (6, 10, 7, 7, 512), expected (7, 10, 7, 7, 512)"),
])
def test_ave_shape_disagreeing_with_card_or_annotations(ave, tmp_path, name, shape, problem):
    with h5py.File(ave["dir"] / name, "w") as h5:
        h5["avadataset"] = np.zeros(shape, dtype=np.float32)
    manifest = build_ave_manifest(ave["annotations"], ave["splits"]).frame
    with pytest.raises(FeatureImportError, match=re.escape(f"{ave['dir'] / name}: ") + ".*" + re.escape(problem)):
        _import(ave, manifest, tmp_path / "shards")
    _leaves_nothing(tmp_path / "shards")


def test_ave_cli(ave, tmp_path, capsys):
    from pipeline.datasets.schema import write_manifest

    manifest = write_manifest(build_ave_manifest(ave["annotations"], ave["splits"]).frame, tmp_path / "m.parquet")
    out = tmp_path / "shards"
    assert main(["ave", "--audio", str(ave["audio_h5"]), "--visual", str(ave["visual_h5"]), "--manifest", str(manifest),
                 "--annotations", str(ave["annotations"]), "--out", str(out)]) == 0
    assert "wrote 1 shards" in capsys.readouterr().out
    assert len(load_feature_set(out)) == len(LINES)
    assert _code(lambda: main(["ave", "--audio", str(ave["audio_h5"]), "--visual", str(ave["visual_h5"]), "--manifest", str(manifest),
                 "--annotations", str(ave["annotations"]), "--out", str(out)])) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err


def _single(path: Path, n: dict[str, int], *, per_second: bool, onehot: bool, classes: int = 4) -> dict:
    rng = np.random.default_rng(1)
    data = {}
    with h5py.File(path, "w") as h5:
        for split, count in n.items():
            shape = (count, 5) if per_second else (count,)
            audio = rng.normal(size=(*shape, 128))
            visual = rng.normal(size=(*shape, 1024)).astype(np.float32)
            labels = np.arange(count) % classes
            h5[f"audio_{split}"], h5[f"visual_{split}"] = audio, visual
            h5[f"lab_{split}"] = np.eye(classes)[labels] if onehot else labels
            data[split] = (audio, visual, labels)
    return data


@pytest.mark.parametrize("per_second, onehot", [(False, True), (True, False)])
def test_single_file_round_trip(tmp_path, per_second, onehot):
    data = _single(tmp_path / "f.h5", {"train": 40, "test": 12}, per_second=per_second, onehot=onehot)
    names = ["w", "x", "y", "z"]
    import_single_file(tmp_path / "f.h5", tmp_path / "shards", classes=names, shard_size=16, val_fraction=0.25)
    features = load_feature_set(tmp_path / "shards")
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 4
    assert features.clip_id[:2].tolist() == ["train_00000", "train_00001"] and features.clip_id[-1] == "test_00011"
    assert (features.split == "test").sum() == 12 and (features.split == "val").sum() == 10
    assert set(features.split[:40]) == {"train", "val"}
    expected_labels = np.concatenate([data["train"][2], data["test"][2]])
    assert features.label_id.tolist() == expected_labels.tolist()
    assert features.label.tolist() == [names[i] for i in expected_labels]
    for i, (split, row) in enumerate([("train", r) for r in range(40)] + [("test", r) for r in range(12)]):
        want_audio = data[split][0][row].astype(np.float32).reshape(-1, 128)
        np.testing.assert_array_equal(features.audio[i], want_audio)
        np.testing.assert_array_equal(features.visual[i], data[split][1][row].reshape(-1, 1024))
    assert features.meta["audio"]["weights"] == hashlib.sha256((tmp_path / "f.h5").read_bytes()).hexdigest()


def test_single_file_default_names_and_cli(tmp_path, capsys):
    _single(tmp_path / "f.h5", {"train": 20, "test": 8}, per_second=False, onehot=True, classes=2)
    assert main(["single", "--h5", str(tmp_path / "f.h5"), "--val-fraction", "0", "--out", str(tmp_path / "s")]) == 0
    assert "train 20, test 8" in capsys.readouterr().out
    assert set(load_feature_set(tmp_path / "s").label) == {"class_0", "class_1"}
    assert _code(lambda: main(["single", "--h5", str(tmp_path / "f.h5"), "--classes", "a", "b", "c", "--out", str(tmp_path / "t")])) == 2
    assert "labels imply 2 classes but 3 class names were given" in capsys.readouterr().err
    _leaves_nothing(tmp_path / "t")


def test_single_file_names_the_extractors_the_user_gives(tmp_path, capsys):
    _single(tmp_path / "f.h5", {"train": 20, "test": 8}, per_second=False, onehot=True, classes=2)
    assert main(["single", "--h5", str(tmp_path / "f.h5"), "--val-fraction", "0", "--out", str(tmp_path / "s"),
                 "--audio-extractor", "openl3", "--visual-extractor", "clip-vit-b32"]) == 0
    meta = load_feature_set(tmp_path / "s").meta
    assert (meta["audio"]["extractor"], meta["visual"]["extractor"]) == ("openl3 (published features)",
                                                                         "clip-vit-b32 (published features)")
    assert main(["single", "--h5", str(tmp_path / "f.h5"), "--val-fraction", "0", "--out", str(tmp_path / "d")]) == 0
    meta = load_feature_set(tmp_path / "d").meta  # default: the authors' VEGAS file in this layout
    assert (meta["audio"]["extractor"], meta["visual"]["extractor"]) == ("vggish (published features)",
                                                                         "inception (published features)")
    capsys.readouterr()
    assert _code(lambda: main(["single", "--h5", str(tmp_path / "f.h5"), "--out", str(tmp_path / "e"),
                               "--visual-extractor", " "])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --visual-extractor: must name what produced the features, got ' '"]
    _leaves_nothing(tmp_path / "e")


@pytest.mark.parametrize("edit, problem", [
    (lambda h5: h5["audio_test"].__setitem__((3, 5), np.nan), "audio_test, row 3 (clip 'test_00003'): non-finite"),
    (lambda h5: h5["lab_train"].__setitem__(2, np.zeros(4)), "lab_train row 2 is not one-hot"),
    (lambda h5: (h5.__delitem__("visual_test"), h5.create_dataset("visual_test", data=np.zeros((8, 512)))),
     "visual_test has shape (8, 512), expected [N, 1024] or [N, T>0, 1024]"),
    (lambda h5: (h5.__delitem__("lab_test"), h5.create_dataset("lab_test", data=np.eye(4)[np.arange(7) % 4])),
     "test has 8 audio, 8 visual and 7 label rows"),
    (lambda h5: h5.__delitem__("audio_train"), "no dataset 'audio_train'"),
])
def test_single_file_bad_input_leaves_nothing(tmp_path, edit, problem):
    _single(tmp_path / "f.h5", {"train": 20, "test": 8}, per_second=False, onehot=True)
    with h5py.File(tmp_path / "f.h5", "r+") as h5:
        edit(h5)
    with pytest.raises(FeatureImportError, match=re.escape(str(tmp_path / "f.h5")) + ".*" + re.escape(problem)):
        import_single_file(tmp_path / "f.h5", tmp_path / "shards")
    _leaves_nothing(tmp_path / "shards")


def _code(run) -> int:
    """The exit status of a CLI ``main`` that raises ``SystemExit(2)`` on bad input."""
    with pytest.raises(SystemExit) as exit_:
        run()
    return exit_.value.code
