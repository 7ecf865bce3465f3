"""retrieval.html of a run over video sources: every file it references exists, previews are real media,
and each retrieved clip is marked relevant exactly when its label is the query's."""

from __future__ import annotations

import re
import wave
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from hscmae.config import ExperimentConfig
from hscmae.experiment import run_experiment
from hscmae.retrieval_page import shown_run
from pipeline.datasets.demo_videos import LABELS_FILE, DemoConfig, write_demo
from pipeline.datasets.folder import SplitConfig, build_folder_manifest
from pipeline.datasets.schema import write_manifest
from pipeline.media.preview import PREVIEW_RATE, PREVIEW_SECONDS
from pipeline.features.shards import ClipFeatures, write_shard

META = {m: {"extractor": "test", "version": "1", "params": {}, "weights": "random"} for m in ("audio", "visual")}


class _Refs(HTMLParser):
    """Every ``src``/``href`` of a page, and the cells (class, text) of its tables by row."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.rows: list[list[tuple[str, str]]] = []
        self._cell: list | None = None

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        self.refs += [found[a] for a in ("src", "href") if a in found]
        if tag == "tr":
            self.rows.append([])
        if tag == "td":
            self._cell = [found.get("class", ""), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data + " "

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(tuple(self._cell))
            self._cell = None


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A run (linear CCA, one seed) over features of 24 short demo videos laid out as build-features does."""
    root = tmp_path_factory.mktemp("page")
    videos = root / "videos"
    write_demo(videos, 24, config=DemoConfig(seconds=3.0, seed=1), workers=1)
    manifest = build_folder_manifest(videos, dataset="demo", split_file=videos / LABELS_FILE,
                                     splitting=SplitConfig(val_fraction=0.0)).frame
    write_manifest(manifest, root / "features" / "manifest.parquet")
    rng = np.random.default_rng(0)
    clips = []
    for i, row in enumerate(manifest.sort_values("clip_id").itertuples()):
        signal = np.eye(5)[row.label_id]  # 5 demo classes; 5 dims keep linear CCA within 6 train clips
        clips.append(ClipFeatures(
            clip_id=row.clip_id, label=row.label, label_id=int(row.label_id), split=("test", "val", "test", "train")[i % 4],
            audio=(signal + 0.3 * rng.normal(size=(3, 5))).astype(np.float32),
            visual=(signal + 0.3 * rng.normal(size=(2, 5))).astype(np.float32)))
    write_shard(root / "features" / "shards" / "shard-00000.parquet", clips, {**META, "dataset": "demo"})
    config = ExperimentConfig(shards=str(root / "features" / "shards"), methods=["linear-cca"], seeds=[0],
                              runs_root=str(root / "runs"))
    run_dir = run_experiment(config, progress=False)
    page = (run_dir / "retrieval.html").read_text()
    parser = _Refs()
    parser.feed(page)
    return run_dir, parser, manifest


def test_every_file_the_page_references_exists(video_run):
    run_dir, parsed, _ = video_run
    local = [r for r in parsed.refs if not re.match(r"^[a-z]+:", r)]
    assert any(r.endswith(".png") and "retrieval/" in r for r in local), "no thumbnails on the page"
    assert any(r.endswith(".wav") for r in local) and "plots/embedding_map.png" in local
    for ref in local:
        assert not Path(ref).is_absolute() and ".." not in Path(ref).parts, ref
        assert (run_dir / ref).is_file(), ref


def test_previews_are_real_media(video_run):
    run_dir, parsed, manifest = video_run
    length = dict(zip(manifest["clip_id"], (manifest["clip_end_s"] - manifest["clip_start_s"]).fillna(3.0)))
    sounds = [run_dir / r for r in parsed.refs if r.endswith(".wav")]
    for path in sounds:
        with wave.open(str(path)) as audio:
            assert audio.getframerate() == PREVIEW_RATE and audio.getnchannels() == 1
            want = min(length[path.stem], PREVIEW_SECONDS)  # the clip (3 s files, cut by labels.csv) or 4 s
            assert audio.getnframes() / PREVIEW_RATE == pytest.approx(want, abs=0.05), path.name
            assert np.abs(np.frombuffer(audio.readframes(audio.getnframes()), "<i2")).max() > 100  # not silence
    for ref in parsed.refs:
        if ref.endswith(".png"):
            assert (run_dir / ref).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hits_are_marked_relevant_exactly_when_labels_match(video_run):
    _, parsed, manifest = video_run
    label = dict(zip(manifest["clip_id"], manifest["label"]))
    rows = [r for r in parsed.rows if r and r[0][0] == "query"]
    assert len(rows) == 2 * 6  # 6 queries per direction
    for cells in rows:
        query_label = label[cells[0][1].split()[0]]
        ap = float(cells[1][1])
        assert 0 < ap <= 1
        for cls, text in cells[2:]:
            assert (cls == "rel") == (label[text.split()[0]] == query_label), text


def test_the_page_shows_hscmae_when_the_run_has_it_else_the_first_method_with_its_lowest_seed():
    assert shown_run([("clip", 2), ("hscmae", 3), ("hscmae", 1)]) == ("hscmae", 1)
    assert shown_run([("dcca", 4), ("linear-cca", 0), ("dcca", 2)]) == ("dcca", 2)
