"""Manifests for your own labelled videos: a folder-per-class tree or a CSV.

CSV columns: ``path,label`` required; ``split``, ``start``/``end`` (seconds, both or
neither; both blank on a row means the whole file) and ``clip_id`` (blank: derived) optional.
``start``/``end`` are where the clip is cut from the file (``times="clip"``, default) or the
annotated event within the whole file (``times="event"``, as in the demo set's ``labels.csv``).
A folder with a ``labels.csv`` at its root is read through that CSV (and says so).

Every row is checked and every problem reported at once (line, column, value, problem);
``on_bad_row="skip"`` keeps the good rows and lists the skipped ones in the build.

Paths are confined to the dataset root (the CSV's folder, or the tree's root): relative
paths are relative to it, absolute ones must lie inside it, and after resolving symlinks a
source outside it is an error unless ``allow_outside_root``. Sources are stored relative to
the root (``frame.attrs["root"]`` holds it), so a manifest does not depend on where data lives.
Dangling symlinks and symlinks to folders are reported as anomalies, never followed.

Without a ``clip_id``, a clip id is derived from the path relative to the root:
``dog/videos/a b.mp4`` -> ``dog.videos.a_b`` (unsafe characters become ``_``). Splits come
from the CSV, from a split file, or a seeded stratified holdout; a val part is carved from
train when there is none.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.datasets.schema import (ROOT_ATTR, Anomaly, ManifestBuild, ManifestError, RowProblem,
                                      validate_manifest)
from pipeline.vocab import CLIP_ID_PATTERN, SPLITS, is_clip_id
from pipeline.datasets.splits import carve_val, stratified_holdout

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
LABELS_CSV = "labels.csv"  # a folder holding this file at its root is read through it
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_BLANK = ("", "nan", "NaN")
_LINE_BREAK = r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]"  # what str.splitlines() breaks at

BadRowPolicy = Literal["error", "skip"]


@dataclass(frozen=True)
class SplitConfig:
    """How clips without a given split are split: stratified test holdout, then val carved from train."""

    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0


def folder_label(name: str) -> str:
    """A folder name as a class name: ``"Rail transport"`` -> ``"rail_transport"``."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def clip_id_from_path(relative: str) -> str:
    """A safe, stable clip id from a relative path: folders joined by ``.``, suffix removed."""
    path = PurePosixPath(relative.replace("\\", "/"))
    parts = [p for p in path.with_suffix("").parts if p not in ("/", "..", ".")]
    return ".".join(_UNSAFE.sub("_", p) for p in parts)


def scan_class_tree(root: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[Anomaly]]:
    """Video files under ``root/<class>/**``: a frame with ``path`` (relative, posix) and ``folder``.

    Files directly under ``root`` have no class, dangling symlinks and symlinks to folders are
    not followed: each is reported as an anomaly, not used.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    records, anomalies = [], []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink() and not path.exists():
            anomalies.append(Anomaly("dangling_symlink", relative, f"points at {os.readlink(path)}, which does not exist; skipped"))
            continue
        if path.is_symlink() and path.is_dir():
            anomalies.append(Anomaly("symlink_to_folder", relative, f"points at folder {os.readlink(path)}; not followed"))
            continue
        if not (path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES):
            continue
        if "/" not in relative:
            anomalies.append(Anomaly("unlabelled_file", relative, "video directly under the root, not in a class folder"))
            continue
        records.append({"path": relative, "folder": relative.split("/", 1)[0], "line": f"file {relative}"})
    return pd.DataFrame.from_records(records, columns=["path", "folder", "line"]), anomalies


def read_csv_table(path: str | os.PathLike[str], what: str = "CSV") -> tuple[pd.DataFrame, list[int]]:
    """A CSV as strings (blank cells stay ``""``), and the line in the file where each row starts.

    A 0-byte, header-less or unparsable file is a :class:`ManifestError`. Line numbers count
    the blank lines pandas skips and quoted cells that span lines, so messages point at the
    line a user sees in an editor.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such {what}") from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: the {what} is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable {what} ({' '.join(str(exc).split())})") from None
    frame.columns = [c.strip() for c in frame.columns]
    starts, previous = [], 0
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, skipinitialspace=True)
        for record in reader:
            if record not in ([], [""]):  # pandas skips blank and whitespace-only lines
                starts.append(previous + 1)
            previous = reader.line_num
    lines = starts[1:]  # the first record is the header
    if len(lines) != len(frame):  # a dialect the two parsers read differently: count rows instead
        lines = list(range(2, len(frame) + 2))
    return frame, lines


def read_labels_csv(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[RowProblem]]:
    """Read a labels CSV and check each cell; returns the rows (with ``line``, its line in the file) and the problems.

    Whole-file problems (empty file, missing columns, no rows) raise :class:`ManifestError`.
    ``start``/``end`` become floats (NaN where both are blank).
    """
    frame, lines = read_csv_table(path, "labels CSV")
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if ("start" in frame.columns) != ("end" in frame.columns):
        missing.append("end" if "start" in frame.columns else "start")
    if missing:
        raise ManifestError(f"{path}: missing columns {missing} (have {list(frame.columns)})")
    if frame.empty:
        raise ManifestError(f"{path}: no rows below the header line")
    frame["line"] = [f"line {n}" for n in lines]
    problems: list[RowProblem] = []

    def flag(rows: np.ndarray, column: str, problem: str) -> None:
        problems.extend(RowProblem(frame.at[int(r), "line"], column, repr(frame.at[int(r), column]), problem) for r in rows)

    for column in [c for c in ("path", "label", "split", "start", "end", "clip_id") if c in frame.columns]:
        frame[column] = frame[column].str.strip()
    for column in [c for c in ("path", "label", "split") if c in frame.columns]:
        flag(np.flatnonzero(frame[column].isin(_BLANK).to_numpy()), column, "empty")
    # a quoted cell over several lines would be a class of its own, named with a line break
    flag(np.flatnonzero(frame["label"].str.contains(_LINE_BREAK).to_numpy()), "label",
         "holds a line break (a quoted cell over several lines); a label is one line")
    if "start" in frame.columns:
        blank = {c: frame[c].isin(_BLANK).to_numpy() for c in ("start", "end")}
        values = {c: pd.to_numeric(frame[c].where(~blank[c]), errors="coerce") for c in ("start", "end")}
        for c, other in (("start", "end"), ("end", "start")):
            flag(np.flatnonzero(blank[c] & ~blank[other]), c, f"blank while '{other}' is given (give both or neither)")
            flag(np.flatnonzero(~blank[c] & ~np.isfinite(values[c].to_numpy())), c, "not a finite number")
        ok = np.isfinite(values["start"].to_numpy()) & np.isfinite(values["end"].to_numpy())
        flag(np.flatnonzero(ok & (values["start"] < 0).to_numpy()), "start", "negative")
        problems.extend(RowProblem(frame.at[int(r), "line"], "end", repr(frame.at[int(r), "end"]),
                                   f"not after start {frame.at[int(r), 'start']}")
                        for r in np.flatnonzero(ok & (values["end"] <= values["start"]).to_numpy()))
        for c in ("start", "end"):
            frame[c] = values[c].astype("float64")
    if "split" in frame.columns:
        flag(np.flatnonzero(~frame["split"].isin(SPLITS).to_numpy() & ~frame["split"].isin(_BLANK).to_numpy()),
             "split", f"not one of {SPLITS}")
    return frame, problems


def _label_problems(frame: pd.DataFrame, known: Sequence[str]) -> list[RowProblem]:
    unknown = ~frame["label"].isin(known).to_numpy() & ~frame["label"].isin(_BLANK).to_numpy()
    return [RowProblem(frame["line"].iloc[i], "label", repr(frame["label"].iloc[i]), f"not in the class list {list(known)}")
            for i in np.flatnonzero(unknown)]


def _id_problems(frame: pd.DataFrame) -> list[RowProblem]:
    """Unsafe clip ids, and each repeated id paired with the first row that has the same id."""
    ids = frame["clip_id"]
    problems = [RowProblem(frame["line"].iloc[i], "clip_id", repr(ids.iloc[i]),
                           f"must match {CLIP_ID_PATTERN.pattern} (no path separators)")
                for i in np.flatnonzero(~ids.map(is_clip_id).to_numpy(dtype=bool))]
    first: dict[str, int] = {}
    for i, clip_id in enumerate(ids):
        if clip_id in first:
            j = first[clip_id]
            problems.append(RowProblem(frame["line"].iloc[i], "clip_id", repr(clip_id),
                                       f"duplicate clip_id (also {frame['line'].iloc[j]}: {frame['path'].iloc[j]})"))
        else:
            first[clip_id] = i
    return problems


def confine(root: Path, given: str, *, allow_outside_root: bool) -> tuple[str | None, str | None]:
    """``(source, problem)`` of one path: ``source`` relative to ``root`` (absolute when outside and allowed).

    Relative paths are relative to ``root``; an absolute path must lie inside it. Symlinks are
    resolved before the check, so a link inside ``root`` to a file outside is outside.
    """
    base = root.resolve()
    candidate = Path(given) if Path(given).is_absolute() else base / given
    resolved = candidate.resolve()
    if resolved.is_relative_to(base):
        inside = Path(os.path.normpath(candidate))
        return (inside.relative_to(base).as_posix() if inside.is_relative_to(base) else resolved.relative_to(base).as_posix()), None
    if allow_outside_root:
        return str(resolved), None
    return None, f"resolves to {resolved}, outside the dataset root {base} (--allow-outside-root to accept)"


def read_split_file(path: str | os.PathLike[str], frame: pd.DataFrame) -> np.ndarray:
    """Split of each clip of ``frame`` from a CSV with columns ``path`` or ``clip_id``, and ``split``."""
    table, lines = read_csv_table(path, "split file")
    key = next((k for k in ("clip_id", "path") if k in table.columns), None)
    if key is None or "split" not in table.columns:
        raise ManifestError(f"{path}: needs columns (clip_id or path) and split, has {list(table.columns)}")
    problems, first_line = [], {}
    for number, name, split in zip(lines, table[key], table["split"]):
        if split not in SPLITS:
            problems.append(RowProblem(f"line {number}", "split", repr(split), f"not one of {SPLITS}"))
        if name in first_line:
            problems.append(RowProblem(f"line {number}", key, repr(name), f"listed twice (first on line {first_line[name]})"))
        first_line.setdefault(name, number)
    if problems:  # every bad line at once
        raise ManifestError.of(str(path), problems)
    mapping = dict(zip(table[key], table["split"]))
    split = frame[key].map(mapping)
    if split.isna().any():
        i = int(np.flatnonzero(split.isna().to_numpy())[0])
        raise ManifestError(f"{path}: no split for {key} {frame[key].iloc[i]!r} ({split.isna().sum()} clips in all)")
    extra = sorted(set(mapping) - set(frame[key]))
    if extra:
        raise ManifestError(f"{path}: {len(extra)} entries match no clip (first: {extra[0]!r})")
    return split.to_numpy(dtype=object)


def make_splits(labels: np.ndarray, given: np.ndarray | None, splitting: SplitConfig) -> np.ndarray:
    """Split names ``[N]``: ``given``, or a stratified test holdout; then val carved from train if absent.

    A split that cannot be made raises ``ValueError`` saying which step failed and what to change.
    """
    if given is None:
        try:
            split = np.where(stratified_holdout(labels, splitting.test_fraction, splitting.seed), "test", "train")
        except ValueError as exc:
            raise ValueError(f"holding out test: {exc} (give splits in the CSV or a split file, or change "
                             "--test-fraction)") from None
    else:
        split = np.asarray(given, dtype=object)
    if splitting.val_fraction > 0:
        try:
            split = carve_val(split, labels, splitting.val_fraction, splitting.seed)
        except ValueError as exc:
            raise ValueError(f"carving val from the train split: {exc} (give val rows in the splits, or change "
                             "--val-fraction; 0 for no val)") from None
    return np.asarray(split, dtype=object)


def _rows(source: Path, classes: Sequence[str] | None) -> tuple[pd.DataFrame, Path, Path, list[Anomaly], list[RowProblem]]:
    """The candidate rows of a tree or CSV, its root, the file that listed them, the anomalies and the cell problems."""
    if source.is_dir() and (source / LABELS_CSV).is_file():
        print(f"{source}: reading the clips and labels of {source / LABELS_CSV} (not the class folders)", file=sys.stderr)
        frame, problems = read_labels_csv(source / LABELS_CSV)
        return frame, source, source / LABELS_CSV, [Anomaly("labels_csv_used", LABELS_CSV, "the folder's labels.csv gives clips, labels"
                                       " and splits; class folders are not scanned")], problems
    if source.is_dir():
        frame, anomalies = scan_class_tree(source)
        if frame.empty:
            raise ManifestError(f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)}) in class folders")
        by_slug = {folder_label(c): c for c in classes} if classes is not None else {}
        frame["label"] = frame["folder"].map(lambda f: by_slug.get(folder_label(f), f))
        return frame, source, source, anomalies, []
    if not source.is_file():
        raise ManifestError(f"{source}: no such labels CSV or dataset folder")
    frame, problems = read_labels_csv(source)
    return frame, source.parent, source, [], problems


def build_folder_manifest(source: str | os.PathLike[str], *, dataset: str = "folder",
                          classes: Sequence[str] | None = None, split_file: str | os.PathLike[str] | None = None,
                          splitting: SplitConfig = SplitConfig(), times: Literal["clip", "event"] = "clip",
                          on_bad_row: BadRowPolicy = "error", allow_outside_root: bool = False) -> ManifestBuild:
    """Manifest of a folder-per-class tree or a labels CSV (``source_kind`` ``file``, sources relative to the root).

    Args:
        source: the tree's root (read through its ``labels.csv`` when it has one), or a CSV
            ``path,label[,split][,start,end][,clip_id]``.
        dataset: the name written in the ``dataset`` column.
        classes: allowed labels in ``label_id`` order (default: the sorted labels found).
        split_file: CSV ``(clip_id|path),split`` replacing the CSV's or the default split.
        splitting: the seeded split used when none is given.
        times: whether a CSV's ``start``/``end`` cut the clip or mark the event in the file.
        on_bad_row: ``error`` raises one :class:`ManifestError` listing every bad cell;
            ``skip`` drops those rows and lists them in ``ManifestBuild.skipped``.
        allow_outside_root: accept paths (or symlink targets) outside the root, stored absolute.
    """
    source = Path(source)
    frame, root, listing, anomalies, problems = _rows(source, classes)
    where = str(listing)
    refused = frame["line"].isin({p.line for p in problems if p.column == "label"})  # no class of their own
    known = list(classes) if classes is not None else sorted(set(frame.loc[~refused, "label"]) - set(_BLANK))
    problems += _label_problems(frame[~refused], known)
    confined = [confine(root, p, allow_outside_root=allow_outside_root) if p not in _BLANK else (None, None)
                for p in frame["path"]]
    frame["source"] = [s for s, _ in confined]
    problems += [RowProblem(frame["line"].iloc[i], "path", repr(frame["path"].iloc[i]), problem)
                 for i, (_, problem) in enumerate(confined) if problem]
    if "clip_id" not in frame.columns:
        frame["clip_id"] = ""
    derived = frame["clip_id"].isin(_BLANK)
    frame.loc[derived, "clip_id"] = frame.loc[derived, "path"].map(clip_id_from_path)
    problems += _id_problems(frame)
    if problems and on_bad_row != "skip":
        raise ManifestError.of(where, sorted(problems, key=lambda p: _line_order(p.line)))
    bad_lines = {p.line for p in problems}
    frame = frame[~frame["line"].isin(bad_lines)].reset_index(drop=True)
    if frame.empty:
        raise ManifestError(f"{where}: every row was skipped ({len(problems)} problems)", problems)
    for clip_id, given, stored in zip(frame["clip_id"], frame["path"], frame["source"]):
        if not (Path(stored) if Path(stored).is_absolute() else root.resolve() / stored).exists():
            anomalies.append(Anomaly("missing_file", clip_id, f"{given}: no such file (acquisition will record it)"))
    label_ids = frame["label"].map({c: i for i, c in enumerate(known)}).to_numpy()
    if split_file is not None:
        given_split = read_split_file(split_file, frame)
    else:
        given_split = frame["split"].to_numpy(dtype=object) if "split" in frame.columns else None
    try:
        split = make_splits(frame["label"].to_numpy(), given_split, splitting)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    has_times = "start" in frame.columns
    cut, event = has_times and times == "clip", has_times and times == "event"
    result = pd.DataFrame({
        "clip_id": frame["clip_id"], "dataset": dataset, "source": frame["source"], "source_kind": "file",
        "clip_start_s": frame["start"].fillna(0.0) if cut else 0.0, "clip_end_s": frame["end"] if cut else np.nan,
        "event_start_s": frame["start"] if event else np.nan, "event_end_s": frame["end"] if event else np.nan,
        "label": frame["label"], "label_id": label_ids, "split": split,
    })
    result.attrs[ROOT_ATTR] = str(root.resolve())
    names = tuple(known)
    present = set(frame["label"])
    anomalies += [Anomaly("empty_class", c, "no clips") for c in names if c not in present]
    policies = {"times": times, "split": "given" if given_split is not None else "stratified",
                "test_fraction": splitting.test_fraction, "val_fraction": splitting.val_fraction,
                "seed": splitting.seed, "on_bad_row": on_bad_row, "allow_outside_root": allow_outside_root}
    skipped = sorted(problems, key=lambda p: _line_order(p.line))
    return ManifestBuild(frame=validate_manifest(result, where), anomalies=anomalies, classes=names,
                         policies=policies, skipped=skipped)


def _line_order(line: str) -> tuple[int, str]:
    number = line.split()[-1]
    return (int(number), "") if number.isdigit() else (0, line)
