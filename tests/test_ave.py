"""AVE manifest: the facts of the real metadata files, policies, class subsets, AudioSet join, bad input."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.ave import ARCHIVE_DIR, ave_clip_id, build_ave_manifest, split_files_in
from pipeline.datasets.schema import ManifestError
from pipeline.vocab import CLIP_ID_PATTERN

SHARED_AVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ave"


@pytest.fixture(scope="module")
def real() -> dict:
    """The real files, parsed independently of the builder (plain string splitting)."""
    if not (SHARED_AVE / "Annotations.txt").is_file():
        pytest.skip("../shared/datasets/ave is absent")
    lines = (SHARED_AVE / "Annotations.txt").read_text().splitlines()[1:]
    split_of = {}
    for split in ("train", "val", "test"):
        for line in (SHARED_AVE / f"{split}Set.txt").read_text().splitlines():
            split_of[line] = split
    return {"lines": lines, "split_of": split_of, "fields": [line.split("&") for line in lines]}


@pytest.fixture(scope="module")
def official(real):
    return build_ave_manifest(SHARED_AVE / "Annotations.txt", split_files_in(SHARED_AVE))


def test_real_counts_classes_and_splits(real, official):
    frame = official.frame
    assert len(frame) == 4143
    assert frame["label"].nunique() == 28
    assert frame["split"].value_counts().to_dict() == {"train": 3339, "val": 402, "test": 402}
    categories = (SHARED_AVE / "categories.txt").read_text().splitlines()
    assert list(official.classes) == categories
    assert (frame["label_id"].to_numpy() == [categories.index(c) for c in frame["label"]]).all()


def test_real_split_of_each_row_is_the_split_file_holding_its_line(real, official):
    for row in official.frame.itertuples():
        line = f"{row.label}&{row.source.split('/')[-1][:-4]}&good&{row.event_start_s:g}&{row.event_end_s:g}"
        assert real["split_of"][line] == row.split


def test_real_shared_youtube_ids_get_distinct_stable_clip_ids(real, official):
    ytids = collections.Counter(f[1] for f in real["fields"])
    assert len(ytids) == 4097
    shared = {k: v for k, v in ytids.items() if v > 1}
    assert len(shared) == 45 and sorted(collections.Counter(shared.values()).items()) == [(2, 44), (3, 1)]
    ids = official.frame["clip_id"]
    assert ids.is_unique and ids.map(lambda c: bool(CLIP_ID_PATTERN.match(c))).all()
    assert ids.iloc[0] == "RUhOCu3LNXM_church_bell"
    assert {a.subject for a in official.anomalies if a.kind == "shared_video"} == set(shared)
    # The header-less repository variant gives the very same manifest.
    repo = build_ave_manifest(SHARED_AVE / "Annotations.repo-data.txt", split_files_in(SHARED_AVE))
    assert repo.frame.equals(official.frame)


def test_real_zero_length_event_is_reported_and_policy_decides(real, official):
    zero = [a for a in official.anomalies if a.kind == "zero_length_event"]
    assert [a.subject for a in zero] == ["VWi2ENBuTbw_church_bell"]
    row = official.frame.set_index("clip_id").loc["VWi2ENBuTbw_church_bell"]
    assert row["event_start_s"] == row["event_end_s"] == 0.0
    dropped = build_ave_manifest(SHARED_AVE / "Annotations.txt", split_files_in(SHARED_AVE), zero_length="drop")
    assert len(dropped.frame) == 4142 and "VWi2ENBuTbw_church_bell" not in set(dropped.frame["clip_id"])
    assert [a.subject for a in dropped.anomalies if a.kind == "zero_length_event"] == ["VWi2ENBuTbw_church_bell"]


def test_real_cross_split_videos_reported_and_dropped_from_later_splits(real, official):
    order = {"train": 0, "val": 1, "test": 2}
    splits_of = collections.defaultdict(set)
    for line, fields in zip(real["lines"], real["fields"]):
        splits_of[fields[1]].add(real["split_of"][line])
    leaked = {y for y, s in splits_of.items() if len(s) > 1}
    assert len(leaked) == 18
    assert {a.subject for a in official.anomalies if a.kind == "cross_split_video"} == leaked
    later = sum(1 for line, f in zip(real["lines"], real["fields"])
                if f[1] in leaked and order[real["split_of"][line]] > min(order[s] for s in splits_of[f[1]]))
    clean = build_ave_manifest(SHARED_AVE / "Annotations.txt", split_files_in(SHARED_AVE), cross_split="drop")
    assert len(clean.frame) == 4143 - later
    assert (clean.frame.groupby(clean.frame["source"])["split"].nunique() == 1).all()


def test_real_class_subset_reindexes_in_card_order(real, official):
    categories = list(official.classes)
    subset = [categories[i] for i in np.random.default_rng(0).permutation(28)[:15]]  # 15 classes, shuffled
    built = build_ave_manifest(SHARED_AVE / "Annotations.txt", split_files_in(SHARED_AVE), classes=subset)
    expected_order = [c for c in categories if c in subset]
    assert list(built.classes) == expected_order
    want = collections.Counter(f[0] for f in real["fields"] if f[0] in subset)
    assert built.frame["label"].value_counts().to_dict() == dict(want)
    assert (built.frame["label_id"].to_numpy() == [expected_order.index(c) for c in built.frame["label"]]).all()
    assert sorted(built.frame["label_id"].unique()) == list(range(15))


def test_real_archive_sources_and_clip_times(official):
    frame = official.frame
    assert (frame["source_kind"] == "archive").all()
    assert (frame["source"] == ARCHIVE_DIR + "/" + frame["clip_id"].str[:11] + ".mp4").all()
    assert (frame["clip_start_s"] == 0).all() and (frame["clip_end_s"] == 10).all()


def _write(tmp: Path, annotations: list[str], splits: dict[str, list[str]]) -> tuple[Path, dict[str, Path]]:
    (tmp / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n" + "\n".join(annotations) + "\n")
    files = {}
    for split, lines in splits.items():
        files[split] = tmp / f"{split}Set.txt"
        files[split].write_text("".join(line + "\n" for line in lines))
    return tmp / "Annotations.txt", files


LINES = ["Bark&AAAAAAAAAAA&good&0&10", "Cat&-BBBBBBBBBB&good&2&5", "Bark&CCCCCCCCCCC&good&1&3"]


def test_audioset_segments_turn_clips_into_youtube_cuts(tmp_path):
    annotations, splits = _write(tmp_path, LINES, {"train": LINES[:2], "test": LINES[2:]})
    segments = tmp_path / "balanced_train_segments.csv"
    segments.write_text("# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=2\n"
                        "# YTID, start_seconds, end_seconds, positive_labels\n"
                        'AAAAAAAAAAA, 30.000, 40.000, "/m/05tny_,/m/068hy"\n-BBBBBBBBBB, 5.500, 9.000, "/m/01yrx"\n')
    result = build_ave_manifest(annotations, splits, segment_lists=[segments])
    built = result.frame.set_index("clip_id")
    a = built.loc[ave_clip_id("AAAAAAAAAAA", "Bark")]
    assert (a["source_kind"], a["source"], a["clip_start_s"], a["clip_end_s"]) == ("youtube", "AAAAAAAAAAA", 30.0, 40.0)
    assert (a["event_start_s"], a["event_end_s"]) == (0.0, 10.0)  # still relative to the clip
    b = built.loc["-BBBBBBBBBB_cat"]
    assert (b["clip_start_s"], b["clip_end_s"]) == (5.5, 9.0)  # a 3.5-s segment cannot hold the 2-5 s event
    c = built.loc["CCCCCCCCCCC_bark"]  # not in the lists: stays an archive clip, and is reported
    assert (c["source_kind"], c["source"]) == ("archive", f"{ARCHIVE_DIR}/CCCCCCCCCCC.mp4")
    reported = {(a.kind, a.subject) for a in result.anomalies}
    assert reported == {("short_segment", "-BBBBBBBBBB_cat"), ("segment_missing", "CCCCCCCCCCC_bark")}


@pytest.mark.parametrize("lines, splits, problem", [
    (["Bark&AAAAAAAAAAA&good&0"], None, "line 2: fields 'Bark&AAAAAAAAAAA&good&0': expected 5"),
    (["Dragon&AAAAAAAAAAA&good&0&10"], None, "line 2: Category 'Dragon': not in the class list"),
    (["Bark&AAAAAAAAAAA&good&6&2"], None, "line 2: EndTime 2: before StartTime 6"),
    (["Bark&../../etc/pa&good&0&10"], None, "line 2: VideoID '../../etc/pa': not an 11-character"),
    (["Bark&AAAAAAAAAAA&good&0&x"], None, "line 2: StartTime/EndTime"),
    (["Bark&AAAAAAAAAAA&good&0&12"], None, "outside the 10-s clip"),
    (["Bark&AAAAAAAAAAA&good&0&10", "Bark&AAAAAAAAAAA&good&0&10"], None,
     "line 3: event AAAAAAAAAAA 'Bark' good 0-10: repeats line 2"),
    (LINES, {"train": ["Bark&AAAAAAAAAAA&good&0&9"], "test": LINES},
     "trainSet.txt, line 1: event AAAAAAAAAAA 'Bark' good 0-9: matches no annotation line"),
    # every bad line of a split file at once
    (LINES, {"train": ["Bark&AAAAAAAAAAA&good&0&9", *LINES, LINES[0]]},
     "trainSet.txt: 2 problems in 2 rows (line | column | value | problem):\n"
     "  line 1 | event | AAAAAAAAAAA 'Bark' good 0-9  | matches no annotation line\n"
     f"  line {len(LINES) + 2} | event | AAAAAAAAAAA 'Bark' good 0-10 | annotation line 2 is already in split 'train' "),
    (LINES, {"train": LINES[:1], "test": LINES[:1]}, "already in split 'train'"),
    (LINES, {"train": LINES[:2]}, "1 annotation rows are in no split file"),
    (["Bark&AAAAAAAAAAA&good&0", "Dragon&AAAAAAAAAAA&good&0&10"], None,
     "Annotations.txt: 2 problems in 2 rows (line | column | value | problem):\n  line 2 | fields"),
])
def test_bad_input_names_file_line_and_problem(tmp_path, lines, splits, problem):
    annotations, files = _write(tmp_path, lines, splits or {"train": lines})
    with pytest.raises(ManifestError, match="^" + re.escape(str(tmp_path)) + ".*" + re.escape(problem)):
        build_ave_manifest(annotations, files)


def test_unknown_subset_class_is_rejected(tmp_path):
    annotations, files = _write(tmp_path, LINES, {"train": LINES})
    with pytest.raises(ManifestError, match="'Unicorn'"):
        build_ave_manifest(annotations, files, classes=["Bark", "Unicorn"])
    assert np.array_equal(build_ave_manifest(annotations, files, classes=["Cat"]).frame["label_id"], [0])
