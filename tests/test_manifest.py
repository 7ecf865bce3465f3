"""Dataset cards, sha256 checks, downloads (file:// only), the manifest CLI and its report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.datasets import demo_videos as demo
from pipeline.datasets.cards import CardError, fetch_source, load_card, verify_source
from pipeline.datasets.manifest import main
from pipeline.datasets.schema import counts_table, read_manifest, report_path

SHARED_AVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ave"
AVE_FILES = {"annotations": "Annotations.txt", "train_split": "trainSet.txt", "val_split": "valSet.txt",
             "test_split": "testSet.txt"}


def _need_shared() -> None:
    if not (SHARED_AVE / "Annotations.txt").is_file():
        pytest.skip("../shared/datasets/ave is absent")


def test_cards_load_with_their_classes():
    assert load_card("vegas").classes == ("baby_cry", "chainsaw", "dog", "drum", "fireworks", "helicopter",
                                          "printer", "rail_transport", "snoring", "water_flowing")
    assert load_card("demo").classes == demo.CLASSES
    ave = load_card("ave")
    assert len(ave.classes) == 28 and ave.expected["splits"] == {"train": 3339, "val": 402, "test": 402}
    assert ave.features["visual"].shape == (10, 7, 7, 512)
    assert not ave.sources["archive"].direct_download


def test_ave_card_matches_the_real_files():
    _need_shared()
    card = load_card("ave")
    assert list(card.classes) == (SHARED_AVE / "categories.txt").read_text().splitlines()
    for key, name in AVE_FILES.items():
        digest = hashlib.sha256((SHARED_AVE / name).read_bytes()).hexdigest()
        assert digest in card.sources[key].sha256
        assert verify_source(SHARED_AVE / name, card, key) == digest
    repo = hashlib.sha256((SHARED_AVE / "Annotations.repo-data.txt").read_bytes()).hexdigest()
    assert repo in card.sources["annotations"].sha256


def test_tampered_file_is_rejected_with_its_digest(tmp_path):
    _need_shared()
    changed = tmp_path / "Annotations.txt"
    changed.write_bytes((SHARED_AVE / "Annotations.txt").read_bytes().replace(b"&0&10", b"&0&9", 1))
    digest = hashlib.sha256(changed.read_bytes()).hexdigest()
    with pytest.raises(CardError, match=f"{changed}: sha256 {digest} is not an accepted version"):
        verify_source(changed, load_card("ave"), "annotations")


def _card(tmp_path: Path, url: str, sha256: str, direct: bool = True) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\ntitle: t\nlicense: none\nclasses: [a, b]\nexpected: {rows: 2}\nsplits: {rule: given}\n"
        f"sources:\n  annotations:\n    file: ann.txt\n    url: {url}\n    direct_download: {str(direct).lower()}\n"
        f"    sha256: [{sha256}]\n")
    return path


def test_fetch_checks_sha256_before_the_file_appears(tmp_path):
    origin = tmp_path / "origin.txt"
    origin.write_text("a&1\nb&2\n")
    good = hashlib.sha256(origin.read_bytes()).hexdigest()
    fetched = fetch_source(load_card(_card(tmp_path, origin.as_uri(), good)), "annotations", tmp_path / "cache")
    assert fetched.read_bytes() == origin.read_bytes()
    with pytest.raises(CardError, match="is not an accepted version"):
        fetch_source(load_card(_card(tmp_path, origin.as_uri(), "ab" * 32)), "annotations", tmp_path / "other")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
    with pytest.raises(CardError, match="not a direct download"):
        fetch_source(load_card(_card(tmp_path, origin.as_uri(), good, direct=False)), "annotations", tmp_path / "x")


def test_malformed_card_is_rejected(tmp_path):
    path = _card(tmp_path, "file:///nowhere", "abc")
    with pytest.raises(CardError, match="malformed sha256"):
        load_card(path)


def test_counts_table_matches_a_hand_count():
    frame = pd.DataFrame({"label": ["b", "a", "b", "b", "a"], "label_id": [1, 0, 1, 1, 0],
                          "split": ["train", "test", "train", "val", "train"]})
    table = counts_table(frame)
    assert list(table.index) == ["a", "b", "total"] and list(table.columns) == ["train", "val", "test", "total"]
    assert table.loc["a"].tolist() == [1, 0, 1, 2] and table.loc["b"].tolist() == [2, 1, 0, 3]
    assert table.loc["total"].tolist() == [3, 1, 1, 5]


def test_cli_ave_on_the_real_files(tmp_path, capsys):
    _need_shared()
    out = tmp_path / "ave.parquet"
    assert main(["ave", "--annotations", str(SHARED_AVE / "Annotations.txt"), "--splits-dir", str(SHARED_AVE),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "total                           3339  402   402   4143" in printed
    assert "zero_length_event: 1" in printed and "cross_split_video: 18" in printed
    frame = read_manifest(out)
    assert len(frame) == 4143
    report = json.loads(report_path(out).read_text())
    kinds = pd.Series([a["kind"] for a in report["anomalies"]]).value_counts().to_dict()
    assert kinds == {"shared_video": 45, "cross_split_video": 18, "zero_length_event": 1}
    assert report["counts"]["total"] == {"train": 3339, "val": 402, "test": 402, "total": 4143}
    assert report["sources"][str(SHARED_AVE / "Annotations.txt")] == load_card("ave").sources["annotations"].sha256[0]


def test_cli_ave_subset_and_policies(tmp_path, capsys):
    _need_shared()
    out = tmp_path / "ave15.parquet"
    assert main(["ave", "--annotations", str(SHARED_AVE / "Annotations.repo-data.txt"), "--splits-dir", str(SHARED_AVE),
                 "--classes", "Bark", "Cat", "Church bell", "--zero-length", "drop", "--out", str(out)]) == 0
    frame = read_manifest(out)
    assert dict(zip(frame["label"], frame["label_id"])) == {"Church bell": 0, "Bark": 1, "Cat": 2}
    assert len(frame) == 188 - 1 + 171 + 60  # class sizes, less the zero-length Church bell event
    assert "policies: zero_length=drop, cross_split=keep" in capsys.readouterr().out


def test_cli_rejects_a_file_not_in_the_card_and_writes_nothing(tmp_path, capsys):
    _need_shared()
    changed = tmp_path / "Annotations.txt"
    changed.write_text((SHARED_AVE / "Annotations.txt").read_text().replace("Church bell&RUhOCu3LNXM", "Bark&RUhOCu3LNXM"))
    out = tmp_path / "out" / "ave.parquet"
    args = ["ave", "--annotations", str(changed), "--splits-dir", str(SHARED_AVE), "--out", str(out)]
    assert _code(lambda: main(args)) == 2
    assert "is not an accepted version" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())
    # Accepting the changed file still fails: the split files no longer match its first line.
    assert _code(lambda: main(args + ["--skip-sha256"])) == 2
    assert "event RUhOCu3LNXM 'Church bell' good 0-10: matches no annotation line" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def _code(run) -> int:
    """The exit status of a CLI ``main`` that raises ``SystemExit(2)`` on bad input."""
    with pytest.raises(SystemExit) as exit_:
        run()
    return exit_.value.code
