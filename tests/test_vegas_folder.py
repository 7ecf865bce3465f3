"""VEGAS and any-folder manifests: generated trees and CSVs; splits; bad input named by file and line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets.cards import load_card
from pipeline.datasets.folder import SplitConfig, build_folder_manifest, clip_id_from_path
from pipeline.datasets.manifest import main
from pipeline.datasets.new_videos import new_videos_manifest
from pipeline.datasets.schema import ManifestError, read_manifest
from pipeline.datasets.vegas import build_vegas_manifest

VEGAS = load_card("vegas").classes


def _listed(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.glob("*/videos/*.mp4")]


def _tree(root: Path, sizes: dict[str, int], nested: bool = True) -> list[str]:
    """Empty ``.mp4`` files in ``root/<folder>/[videos/]<i>.mp4``; returns their relative paths."""
    paths = []
    for folder, n in sizes.items():
        for i in range(n):
            relative = f"{folder}/videos/{folder[:3]}_{i:04d}.mp4" if nested else f"{folder}/{i:04d}.mp4"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).touch()
            paths.append(relative)
    return paths


@pytest.fixture
def vegas_tree(tmp_path) -> tuple[Path, dict[str, int]]:
    sizes = {c: 20 + 7 * i for i, c in enumerate(VEGAS)}
    _tree(tmp_path / "VEGAS", sizes)
    (tmp_path / "VEGAS" / "README.mp4").touch()  # no class folder: reported, not used
    (tmp_path / "VEGAS" / "dog" / "notes.txt").write_text("not a video")
    return tmp_path / "VEGAS", sizes


def test_vegas_tree_counts_ids_and_stratified_default_split(vegas_tree):
    root, sizes = vegas_tree
    built = build_vegas_manifest(root)
    frame = built.frame
    assert frame["label"].value_counts().to_dict() == sizes
    assert (frame["label_id"] == frame["label"].map(VEGAS.index)).all()
    assert frame["clip_id"].iloc[0] == "baby_cry.videos.bab_0000"
    assert sorted(frame["source"]) == sorted(_listed(root)) and frame.attrs["root"] == str(root.resolve())
    assert [a.subject for a in built.anomalies if a.kind == "unlabelled_file"] == ["README.mp4"]
    assert any(a.kind == "count_differs" for a in built.anomalies)
    # Per class: 20% test and 10% of the rest val, each within one clip of the exact share.
    for label, n in sizes.items():
        part = frame[frame["label"] == label]["split"].value_counts()
        assert abs(part["test"] - 0.2 * n) <= 1
        assert abs(part["val"] - 0.1 * (n - part["test"])) <= 1
        assert part.sum() == n
    again = build_vegas_manifest(root).frame
    assert again.equals(frame)
    other = build_vegas_manifest(root, splitting=SplitConfig(seed=1)).frame
    assert not other["split"].equals(frame["split"])


def test_vegas_rejects_a_folder_that_is_not_a_class(vegas_tree):
    root, _ = vegas_tree
    _tree(root, {"Cello": 2}, nested=False)
    with pytest.raises(ManifestError, match=re.escape(f"{root}: 2 problems in 2 rows (line | column | value | problem):\n"
                                                       "  file Cello/0000.mp4 | label | 'Cello' | not in the class list")):
        build_vegas_manifest(root)


def test_folder_names_match_card_classes_loosely(tmp_path):
    _tree(tmp_path, {"Baby cry": 3, "rail-transport": 3}, nested=False)
    frame = build_vegas_manifest(tmp_path, splitting=SplitConfig(test_fraction=0.34, val_fraction=0)).frame
    assert set(frame["label"]) == {"baby_cry", "rail_transport"}
    assert set(frame["label_id"]) == {VEGAS.index("baby_cry"), VEGAS.index("rail_transport")}
    assert frame["clip_id"].str.startswith(("Baby_cry.", "rail-transport.")).all()


def test_vegas_split_file_replaces_the_default(vegas_tree, tmp_path):
    root, sizes = vegas_tree
    default = build_vegas_manifest(root).frame
    rng = np.random.default_rng(3)
    chosen = rng.choice(["train", "val", "test"], size=len(default))
    split_file = tmp_path / "split.csv"
    pd.DataFrame({"clip_id": default["clip_id"], "split": chosen}).to_csv(split_file, index=False)
    frame = build_vegas_manifest(root, split_file=split_file).frame
    assert (frame["split"].to_numpy() == chosen).all()
    pd.DataFrame({"clip_id": default["clip_id"][:-1], "split": chosen[:-1]}).to_csv(split_file, index=False)
    with pytest.raises(ManifestError, match=re.escape(f"{split_file}: no split for clip_id {default['clip_id'].iloc[-1]!r}")):
        build_vegas_manifest(root, split_file=split_file)
    # every bad line at once: a split name that is not one, and a clip listed twice
    ids, splits = list(default["clip_id"]), list(chosen)
    splits[1] = "dev"
    text = pd.DataFrame({"clip_id": ids + [ids[0]], "split": splits + ["test"]}).to_csv(index=False)
    lines = text.splitlines()
    split_file.write_text("\n".join([lines[0], "", lines[1], "   ", *lines[2:]]) + "\n")  # blank lines count
    with pytest.raises(ManifestError) as error:
        build_vegas_manifest(root, split_file=split_file)
    assert [(p.line, p.column, p.problem) for p in error.value.problems] == [
        ("line 5", "split", "not one of ('train', 'val', 'test')"),
        (f"line {len(ids) + 4}", "clip_id", "listed twice (first on line 3)")]
    assert str(error.value).startswith(f"{split_file}: 2 problems in 2 rows (line | column | value | problem):")


def test_clip_id_from_path_is_safe_and_stable():
    assert clip_id_from_path("dog/videos/a b(1).mp4") == "dog.videos.a_b_1_"
    assert clip_id_from_path("../x/y.mkv") == "x.y"
    assert clip_id_from_path("C:\\data\\cat.mp4") == "C_.data.cat"


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_csv_with_splits_and_cut_times(tmp_path):
    source = _csv(tmp_path, "path,label,split,start,end\nv/a.mp4,cat,train,1.5,4\nv/b.mp4,dog,test,0,10\n"
                            "/abs/c.mp4,cat,val,2,3\n")
    frame = build_folder_manifest(source, dataset="mine", allow_outside_root=True).frame
    assert frame["clip_id"].tolist() == ["v.a", "v.b", "abs.c"]
    assert frame["source"].tolist() == ["v/a.mp4", "v/b.mp4", "/abs/c.mp4"]
    assert frame["clip_start_s"].tolist() == [1.5, 0.0, 2.0] and frame["clip_end_s"].tolist() == [4.0, 10.0, 3.0]
    assert frame["event_start_s"].isna().all() and frame["split"].tolist() == ["train", "test", "val"]
    assert dict(zip(frame["label"], frame["label_id"])) == {"cat": 0, "dog": 1}
    events = build_folder_manifest(source, times="event", allow_outside_root=True).frame
    assert events["event_start_s"].tolist() == [1.5, 0.0, 2.0] and events["clip_start_s"].tolist() == [0.0] * 3
    assert events["clip_end_s"].isna().all()


BAD_CSVS = [
    ("path,split\na.mp4,train\n", "missing columns ['label']"),
    ("path,label,start\na.mp4,cat,1\n", "missing columns ['end']"),
    ("path,label\na.mp4,cat\nb.mp4,unicorn\n", "line 3: label 'unicorn': not in the class list"),
    ("path,label,start,end\na.mp4,cat,5,2\n", "line 2: end '2': not after start 5"),
    ("path,label,clip_id\na.mp4,cat,ok\nb.mp4,dog,../../etc\n", "line 3: clip_id '../../etc': must match"),
    ("path,label,clip_id\na.mp4,cat,x1\nb.mp4,dog,x1\n", "line 3: clip_id 'x1': duplicate clip_id (also line 2: a.mp4)"),
    ("path,label\na/b.mp4,cat\na/b.mkv,dog\n", "line 3: clip_id 'a.b': duplicate clip_id (also line 2: a/b.mp4)"),
    ("path,label,start,end\na.mp4,cat,0,NaN\n", "line 2: end 'NaN': blank while 'start' is given"),
    ("path,label,start,end\na.mp4,cat,0,ten\n", "line 2: end 'ten': not a finite number"),
    ("path,label\na.mp4,\n", "line 2: label '': empty"),
    ("path,label,split\na.mp4,cat,holdout\n", "line 2: split 'holdout': not one of"),
]


@pytest.mark.parametrize("text, problem", BAD_CSVS)
def test_bad_csv_is_rejected_by_the_cli_and_nothing_is_written(tmp_path, capsys, text, problem):
    source = _csv(tmp_path, text)
    out = tmp_path / "out" / "m.parquet"
    with pytest.raises(SystemExit) as exit_:
        main(["folder", "--source", str(source), "--classes", "cat", "dog", "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {source}") and problem in err
    assert not (tmp_path / "out").exists()


def test_cli_folder_and_vegas_write_manifests(tmp_path, vegas_tree, capsys):
    root, sizes = vegas_tree
    out = tmp_path / "vegas.parquet"
    assert main(["vegas", "--source", str(root), "--out", str(out), "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"^total +\d+ +\d+ +\d+ +{sum(sizes.values())}$", printed, re.M)
    assert len(read_manifest(out)) == sum(sizes.values())
    tree = tmp_path / "mine"
    _tree(tree, {"a": 5, "b": 5}, nested=False)
    out = tmp_path / "mine.parquet"
    assert main(["folder", "--source", str(tree), "--dataset", "mine", "--test-fraction", "0.4",
                 "--val-fraction", "0", "--out", str(out)]) == 0
    frame = read_manifest(out)
    assert (frame["dataset"] == "mine").all()
    assert frame.groupby("label")["split"].value_counts().to_dict() == {
        ("a", "train"): 3, ("a", "test"): 2, ("b", "train"): 3, ("b", "test"): 2}


def test_new_videos_read_a_labels_csv_as_clip_cuts_or_as_events(demo_dir, demo_labels, tmp_path):
    """The demo set's labels.csv marks events: read as cuts, each clip is its event window; with
    ``times="event"`` it is the whole file, as build-features made it for training (``flows.embed --times``)."""
    cut = new_videos_manifest(demo_dir, tmp_path / "cut")
    whole = new_videos_manifest(demo_dir, tmp_path / "whole", times="event")
    assert list(cut["source"]) == list(whole["source"]) == list(demo_labels["path"])
    np.testing.assert_allclose(cut["clip_start_s"], demo_labels["start"])
    np.testing.assert_allclose(cut["clip_end_s"], demo_labels["end"])
    assert (whole["clip_start_s"] == 0.0).all() and whole["clip_end_s"].isna().all()
    np.testing.assert_allclose(whole["event_start_s"], demo_labels["start"])
    np.testing.assert_allclose(whole["event_end_s"], demo_labels["end"])
