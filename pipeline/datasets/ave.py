"""AVE manifest from the official ``Annotations.txt`` and ``train/val/testSet.txt``.

Each line is ``Category&VideoID&Quality&StartTime&EndTime``; event times are seconds
within the 10-s AVE clip. Facts of the real files this module handles (each reported,
none silently fixed):

- a YouTube id is not a clip id: 45 ids carry several events of different categories, so
  ``clip_id = <ytid>_<category slug>`` (stable under re-ordering, a header line, or a class
  subset; row numbers would not be);
- split files list whole annotation lines, so a row is matched to its split by content;
- 18 videos have events in more than one split (the same audio and frames in train and
  test); ``cross_split="drop"`` removes the later-split rows, default ``keep`` follows the
  official protocol so numbers compare with published ones;
- one event lasts zero seconds (``VWi2ENBuTbw``, 0 to 0); ``zero_length`` keeps or drops it.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.datasets.cards import DatasetCard, load_card
from pipeline.datasets.schema import Anomaly, ManifestBuild, ManifestError, RowProblem, validate_manifest
from pipeline.vocab import SPLITS

HEADER = ("Category", "VideoID", "Quality", "StartTime", "EndTime")
ARCHIVE_DIR = "AVE_Dataset/AVE"
CLIP_SECONDS = 10.0
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
_YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")

Policy = Literal["keep", "drop"]


@dataclass(frozen=True)
class AveRow:
    """One parsed annotation line; ``line`` is its 1-based line number in ``path``."""

    path: str
    line: int
    category: str
    ytid: str
    quality: str
    start: float
    end: float

    @property
    def key(self) -> tuple[str, str, str, float, float]:
        return (self.category, self.ytid, self.quality, self.start, self.end)

    @property
    def described(self) -> str:
        """The fields that identify the line, as messages show them: ``AAAAAAAAAAA 'Bark' good 0-10``."""
        return f"{self.ytid} {self.category!r} {self.quality} {self.start:g}-{self.end:g}"


def category_slug(category: str) -> str:
    """``"Male speech, man speaking"`` -> ``"male_speech_man_speaking"``."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def ave_clip_id(ytid: str, category: str) -> str:
    """The stable clip id of one AVE event: ``<ytid>_<category slug>``."""
    return f"{ytid}_{category_slug(category)}"


def read_ave_lines(path: str | os.PathLike[str], classes: Sequence[str]) -> list[AveRow]:
    """Parse an AVE annotation or split file (with or without its header line).

    Raises one :class:`ManifestError` naming the file and every bad line with its problem: a
    wrong field count, a category not in ``classes``, an unsafe YouTube id, a time that is not
    a number, outside ``[0, 10]``, or an end before its start.
    """
    rows, problems = [], []
    known = set(classes)
    text = Path(path).read_text()
    if not text.strip():
        raise ManifestError(f"{path}: the file is empty")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = tuple(f.strip() for f in line.split("&"))
        if number == 1 and fields == HEADER:
            continue
        problem = _line_problem(fields, known)
        if problem is not None:
            problems.append(RowProblem(f"line {number}", *problem))
            continue
        category, ytid, quality, start_text, end_text = fields
        rows.append(AveRow(str(path), number, category, ytid, quality, float(start_text), float(end_text)))
    if problems:
        raise ManifestError.of(str(path), problems)
    return rows


def _line_problem(fields: tuple[str, ...], known: set[str]) -> tuple[str, str, str] | None:
    """``(column, value, problem)`` of the first thing wrong with one annotation line, or None."""
    if len(fields) != len(HEADER):
        return "fields", repr("&".join(fields)), f"expected {len(HEADER)} '&'-separated fields {HEADER}, got {len(fields)}"
    category, ytid, _, start_text, end_text = fields
    if category not in known:
        return "Category", repr(category), "not in the class list"
    if not _YTID.match(ytid):
        return "VideoID", repr(ytid), "not an 11-character YouTube id"
    try:
        start, end = float(start_text), float(end_text)
    except ValueError:
        return "StartTime/EndTime", f"{start_text!r}/{end_text!r}", "not numbers"
    if not (0.0 <= start <= CLIP_SECONDS and 0.0 <= end <= CLIP_SECONDS):
        return "StartTime/EndTime", f"{start:g}/{end:g}", f"outside the {CLIP_SECONDS:g}-s clip"
    if end < start:
        return "EndTime", f"{end:g}", f"before StartTime {start:g}"
    return None


def assign_splits(rows: Sequence[AveRow], split_files: Mapping[str, str | os.PathLike[str]],
                  classes: Sequence[str]) -> list[str]:
    """The split of each annotation row, found by matching split-file lines to annotation lines.

    Raises :class:`ManifestError` for a split line that matches no annotation, a row listed
    twice, or an annotation row that no split file lists; each file's bad lines all at once.
    """
    index: dict[tuple, int] = {}
    repeats = []
    for i, row in enumerate(rows):
        if row.key in index:
            first = rows[index[row.key]]
            repeats.append(RowProblem(f"line {row.line}", "event", row.described,
                                      f"repeats line {first.line}"))
        index.setdefault(row.key, i)
    if repeats:
        raise ManifestError.of(rows[0].path, repeats)
    split_of: dict[int, tuple[str, str]] = {}
    for split, path in split_files.items():
        if split not in SPLITS:
            raise ManifestError(f"{path}: unknown split {split!r} (expected one of {SPLITS})")
        problems = []
        for entry in read_ave_lines(path, classes):
            where, i = f"line {entry.line}", index.get(entry.key)
            if i is None:
                problems.append(RowProblem(where, "event", entry.described,
                                           "matches no annotation line"))
            elif i in split_of:
                problems.append(RowProblem(where, "event", entry.described,
                                           f"annotation line {rows[i].line} is already in split {split_of[i][0]!r} "
                                           f"({split_of[i][1]})"))
            else:
                split_of[i] = (split, f"{path}, {where}")
        if problems:
            raise ManifestError.of(str(path), problems)
    unsplit = [rows[i] for i in range(len(rows)) if i not in split_of]
    if unsplit:
        raise ManifestError(f"{unsplit[0].path}, line {unsplit[0].line}: {len(unsplit)} annotation rows are in "
                            f"no split file (first: {unsplit[0].ytid} {unsplit[0].category!r})")
    return [split_of[i][0] for i in range(len(rows))]


def read_segment_lists(paths: Sequence[str | os.PathLike[str]]) -> dict[str, list[tuple[float, float]]]:
    """AudioSet segment lists (``YTID, start_seconds, end_seconds, ...``, ``#`` comment lines): ytid -> segments."""
    segments: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in paths:
        frame = pd.read_csv(path, comment="#", header=None, skipinitialspace=True, usecols=[0, 1, 2],
                            names=["ytid", "start", "end"], dtype={"ytid": str}, quotechar='"')
        starts, ends = pd.to_numeric(frame["start"], errors="coerce"), pd.to_numeric(frame["end"], errors="coerce")
        bad = np.flatnonzero((starts.isna() | ends.isna() | (ends <= starts)).to_numpy())
        if len(bad):
            raise ManifestError(f"{path}: segment row {int(bad[0])} ({frame.at[int(bad[0]), 'ytid']!r}) has no valid "
                                "start_seconds < end_seconds")
        for ytid, start, end in zip(frame["ytid"], starts, ends):
            if (float(start), float(end)) not in segments[ytid]:
                segments[ytid].append((float(start), float(end)))
    return dict(segments)


def _subset(card: DatasetCard, classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return card.classes
    unknown = [c for c in classes if c not in card.classes]
    if unknown:
        raise ManifestError(f"{card.path}: classes {unknown} are not {card.name} classes")
    if not classes:
        raise ManifestError(f"{card.path}: the class subset is empty")
    wanted = set(classes)
    return tuple(c for c in card.classes if c in wanted)


def _video_anomalies(rows: Sequence[AveRow], splits: Sequence[str], keep: Sequence[int],
                     cross_split: Policy) -> tuple[list[Anomaly], set[int]]:
    """Videos with several events (reported) and videos in several splits (reported; rows to drop)."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i in keep:
        by_video[rows[i].ytid].append(i)
    anomalies, dropped = [], set()
    for ytid, members in by_video.items():
        if len(members) > 1:  # kept: the clip id includes the category
            anomalies.append(Anomaly("shared_video", ytid, "; ".join(
                f"{rows[i].category} ({splits[i]}, line {rows[i].line})" for i in members)))
    for ytid, members in by_video.items():
        used = sorted({splits[i] for i in members}, key=SPLITS.index)
        if len(used) > 1:
            later = [i for i in members if splits[i] != used[0]]
            anomalies.append(Anomaly("cross_split_video", ytid, f"events in {used}: " + "; ".join(
                f"{rows[i].category} ({splits[i]})" for i in members) + f"; policy {cross_split}: {len(later)} later-split rows"))
            if cross_split == "drop":
                dropped.update(later)
    return anomalies, dropped


def _clip_place(row: AveRow, clip_id: str, segments: dict[str, list[tuple[float, float]]] | None,
                anomalies: list[Anomaly]) -> tuple[str, str, float, float]:
    """``(source, source_kind, clip_start_s, clip_end_s)``: the archive clip, or its AudioSet segment when listed."""
    if segments is not None:
        found = segments.get(row.ytid, [])
        if len(found) == 1:
            start, end = found[0]
            if row.end > end - start:
                anomalies.append(Anomaly("short_segment", clip_id, f"segment {start:g}-{end:g} s is shorter "
                                         f"than the event end {row.end:g} s"))
            return row.ytid, "youtube", start, end
        anomalies.append(Anomaly("segment_missing" if not found else "segment_ambiguous", clip_id,
                                 f"{len(found)} AudioSet segments; kept as archive source"))
    return f"{ARCHIVE_DIR}/{row.ytid}.mp4", "archive", 0.0, CLIP_SECONDS


def build_ave_manifest(annotations: str | os.PathLike[str], split_files: Mapping[str, str | os.PathLike[str]], *,
                       card: DatasetCard | None = None, classes: Sequence[str] | None = None,
                       zero_length: Policy = "keep", cross_split: Policy = "keep",
                       segment_lists: Sequence[str | os.PathLike[str]] = ()) -> ManifestBuild:
    """Build the AVE manifest; anomalies are reported in the result, never silently fixed.

    Args:
        annotations: ``Annotations.txt`` (with or without its header line).
        split_files: split name -> split file (``trainSet.txt`` ...).
        card: the AVE card (default ``data_manifests/ave.yaml``); its class order defines ``label_id``.
        classes: a subset of the card's classes; label ids are re-indexed in card order.
        zero_length: keep or drop events with ``EndTime == StartTime``.
        cross_split: keep, or drop the rows of a video already used by an earlier split (train < val < test).
        segment_lists: AudioSet segment CSVs; matched rows become ``youtube`` sources cut at their segment.
    """
    for name, policy in (("zero_length", zero_length), ("cross_split", cross_split)):
        if policy not in ("keep", "drop"):
            raise ValueError(f"{name} must be 'keep' or 'drop', got {policy!r}")
    card = card or load_card("ave")
    rows = read_ave_lines(annotations, card.classes)
    splits = assign_splits(rows, split_files, card.classes)
    chosen = _subset(card, classes)
    keep = [i for i, row in enumerate(rows) if row.category in chosen]
    anomalies = [Anomaly("excluded_class", "", f"{len(rows) - len(keep)} rows of classes outside the subset")] \
        if len(keep) < len(rows) else []
    video_anomalies, dropped = _video_anomalies(rows, splits, keep, cross_split)
    anomalies += video_anomalies
    for i in keep:
        if rows[i].end == rows[i].start:
            anomalies.append(Anomaly("zero_length_event", ave_clip_id(rows[i].ytid, rows[i].category),
                                     f"line {rows[i].line}: event {rows[i].start:g}-{rows[i].end:g} s; {zero_length}"))
            if zero_length == "drop":
                dropped.add(i)
    segments = read_segment_lists(segment_lists) if segment_lists else None
    records = []
    for i in (i for i in keep if i not in dropped):
        row = rows[i]
        clip_id = ave_clip_id(row.ytid, row.category)
        source, kind, start, end = _clip_place(row, clip_id, segments, anomalies)
        records.append({
            "clip_id": clip_id, "dataset": card.name, "source": source, "source_kind": kind,
            "clip_start_s": start, "clip_end_s": end, "event_start_s": row.start, "event_end_s": row.end,
            "label": row.category, "label_id": chosen.index(row.category), "split": splits[i],
        })
    frame = validate_manifest(pd.DataFrame.from_records(records), str(annotations))
    return ManifestBuild(frame=frame, anomalies=anomalies, classes=chosen,
                         policies={"zero_length": zero_length, "cross_split": cross_split})


def split_files_in(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The official split files (``trainSet.txt``, ``valSet.txt``, ``testSet.txt``) in ``directory``."""
    files = {split: Path(directory) / name for split, name in SPLIT_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ManifestError(f"{directory}: missing split files {missing}")
    return files
