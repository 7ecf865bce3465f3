"""Manifests: one row per clip, saying what to fetch, which seconds to cut and its label.

Schema (this module owns it): ``clip_id`` (unique, ``[A-Za-z0-9_.-]+``), ``dataset``,
``source`` (a YouTube id, a path inside an archive, or a file path), ``source_kind``
(``youtube`` | ``archive`` | ``file``), ``clip_start_s``/``clip_end_s`` (where the clip
sits in the source; ``clip_end_s`` NaN means "to the end of the source"), ``event_start_s``/``event_end_s`` (the annotated event, relative
to the clip; NaN when the dataset has no event annotation), ``label``, ``label_id``, ``split`` (``train``/``val``/``test``).

Builders (``pipeline.ave``, ``pipeline.vegas``, ``pipeline.folder``) return a :class:`ManifestBuild`:
the manifest plus the anomalies they found. ``python -m pipeline.manifest {ave,vegas,folder} ...
--out OUT.parquet`` writes it with ``OUT.report.json`` and prints counts by class and split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.digest import sha256_file
from pipeline.shards import CLIP_ID_PATTERN, SPLITS, is_clip_id

MANIFEST_COLUMNS = (
    "clip_id", "dataset", "source", "source_kind", "clip_start_s", "clip_end_s",
    "event_start_s", "event_end_s", "label", "label_id", "split",
)
SOURCE_KINDS = ("youtube", "archive", "file")
_FLOAT_COLUMNS = ("clip_start_s", "clip_end_s", "event_start_s", "event_end_s")


class ManifestError(ValueError):
    """A manifest breaks the contract; the message names the file, the row and the problem."""


@dataclass(frozen=True)
class Anomaly:
    """Something in a dataset's metadata that a user must know about (kept or dropped per a policy).

    Args:
        kind: ``zero_length_event``, ``cross_split_video``, ``shared_video``, ``segment_missing``...
        subject: the clip id or YouTube id concerned ("" for a summary line).
        detail: what was found and what the builder did with it.
    """

    kind: str
    subject: str
    detail: str


@dataclass
class ManifestBuild:
    """A built manifest with what the builder found on the way.

    ``frame`` is a validated manifest; ``classes`` the label names in ``label_id`` order;
    ``policies`` the choices that decided which rows were kept; ``sources`` file -> sha256.
    """

    frame: pd.DataFrame
    anomalies: list[Anomaly]
    classes: tuple[str, ...]
    policies: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def validate_manifest(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check ``frame`` against the schema and return it with canonical dtypes and column order.

    Raises :class:`ManifestError` naming ``where`` and the first offending row.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{where}: missing columns {missing}")
    frame = frame.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)

    def fail(mask: np.ndarray | pd.Series, problem: str) -> None:
        rows = np.flatnonzero(np.asarray(mask))
        if len(rows):
            row = int(rows[0])
            raise ManifestError(
                f"{where}, row {row} (clip_id {frame.at[row, 'clip_id']!r}): {problem}"
                + (f" ({len(rows)} rows in all)" if len(rows) > 1 else "")
            )

    ids = frame["clip_id"].astype("string")
    fail(~frame["clip_id"].map(is_clip_id).to_numpy(dtype=bool), f"clip_id must match {CLIP_ID_PATTERN.pattern} (no path separators)")
    fail(ids.duplicated(), "duplicate clip_id")
    fail(~frame["source_kind"].isin(SOURCE_KINDS), f"source_kind must be one of {SOURCE_KINDS}")
    fail(frame["source"].isna() | (frame["source"].astype(str) == ""), "source is empty")
    fail(frame["label"].isna() | (frame["label"].astype(str) == ""), "label is absent")
    fail(~frame["split"].isin(SPLITS), f"split must be one of {SPLITS}")
    for column in _FLOAT_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        fail(values.isna() & frame[column].notna(), f"{column} is not a number")
        frame[column] = values.astype("float64")
    fail(frame["clip_start_s"].isna(), "clip_start_s is missing")
    fail(frame["clip_start_s"] < 0, "clip_start_s is negative")
    fail(frame["clip_end_s"] <= frame["clip_start_s"], "clip_end_s is not after clip_start_s")
    fail(frame["event_end_s"] < frame["event_start_s"], "event_end_s is before event_start_s")
    label_ids = pd.to_numeric(frame["label_id"], errors="coerce")
    fail(label_ids.isna() | (label_ids < 0), "label_id is absent or negative")
    frame["label_id"] = label_ids.astype("int32")
    pairs = frame[["label", "label_id"]].drop_duplicates()
    fail(frame["label"].isin(pairs["label"][pairs["label"].duplicated()]), "one label has several label_ids")
    fail(frame["label_id"].isin(pairs["label_id"][pairs["label_id"].duplicated()]), "one label_id has several labels")
    for column in ("clip_id", "dataset", "source", "source_kind", "label", "split"):
        frame[column] = frame[column].astype(str)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validate ``frame`` and write it to Parquet atomically."""
    frame = validate_manifest(frame, str(path))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a manifest written by :func:`write_manifest`."""
    return validate_manifest(pd.read_parquet(path), str(path))


def report_path(manifest_path: str | os.PathLike[str]) -> Path:
    """Where the report of a manifest goes: ``x.parquet`` -> ``x.report.json``."""
    path = Path(manifest_path)
    return path.with_name(path.stem + ".report.json")


def counts_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Clips per label (rows, in ``label_id`` order) and split (columns), with totals."""
    order = frame.drop_duplicates("label").sort_values("label_id")["label"].tolist()
    table = pd.crosstab(frame["label"], frame["split"], margins=True, margins_name="total")
    columns = [s for s in SPLITS if s in table.columns] + ["total"]
    return table.reindex(index=order + ["total"], columns=columns, fill_value=0)


def write_build(build: ManifestBuild, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the manifest (Parquet) and its report (JSON: counts, policies, sources, anomalies), atomically."""
    frame = validate_manifest(build.frame, str(path))
    report = {
        "dataset": sorted(frame["dataset"].unique().tolist()),
        "rows": len(frame),
        "classes": list(build.classes),
        "counts": counts_table(frame).to_dict(orient="index"),
        "policies": build.policies,
        "sources": build.sources,
        "anomalies": [asdict(a) for a in build.anomalies],
    }
    with atomic_path(report_path(path)) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str))
    return write_manifest(frame, path), report_path(path)


def print_summary(build: ManifestBuild, *, shown: int = 5, stream: TextIO | None = None) -> None:
    """Print counts by split and class, then the anomalies by kind (the first ``shown`` of each)."""
    stream = stream or sys.stdout
    print(counts_table(build.frame).to_string(), file=stream)
    kinds: dict[str, list[Anomaly]] = {}
    for anomaly in build.anomalies:
        kinds.setdefault(anomaly.kind, []).append(anomaly)
    print(f"\nanomalies: {len(build.anomalies)}" + ("" if kinds else " (none)"), file=stream)
    for kind, items in kinds.items():
        print(f"  {kind}: {len(items)}", file=stream)
        for anomaly in items[:shown]:
            print(f"    {anomaly.subject}: {anomaly.detail}", file=stream)
        if len(items) > shown:
            print(f"    ... {len(items) - shown} more in the report", file=stream)
    if build.policies:
        print("policies: " + ", ".join(f"{k}={v}" for k, v in build.policies.items()), file=stream)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.manifest", description=(
        "Build a manifest (Parquet) and its report (<out>.report.json); print counts and anomalies."))
    sub = parser.add_subparsers(dest="command", required=True)

    ave = sub.add_parser("ave", help="AVE from Annotations.txt and the official split files")
    given = ave.add_mutually_exclusive_group(required=True)
    given.add_argument("--annotations", type=Path, help="Annotations.txt (with or without header)")
    given.add_argument("--fetch-annotations", type=Path, metavar="DIR",
                       help="download Annotations.txt from the official repository into DIR (sha256 checked)")
    ave.add_argument("--splits-dir", type=Path, required=True, help="folder with trainSet/valSet/testSet.txt")
    ave.add_argument("--classes", type=str, nargs="+", default=None, help="class subset (card names)")
    ave.add_argument("--zero-length", type=str, choices=("keep", "drop"), default="keep",
                     help="events lasting 0 s (reported either way)")
    ave.add_argument("--cross-split", type=str, choices=("keep", "drop"), default="keep",
                     help="rows of a video already in an earlier split (reported either way)")
    ave.add_argument("--audioset-segments", type=Path, nargs="+", default=[],
                     help="AudioSet segment CSVs: clips become YouTube sources cut at their segment")
    ave.add_argument("--skip-sha256", action="store_true", help="accept files whose sha256 is not in the card")

    for name, help_text in (("vegas", "VEGAS from its per-class folder tree"),
                            ("folder", "any folder-per-class tree or a CSV path,label[,split][,start,end]")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--source", type=Path, required=True,
                         help="dataset root (class folders)" + (" or a labels CSV" if name == "folder" else ""))
        cmd.add_argument("--split-file", type=Path, default=None, help="CSV with columns (path|clip_id),split")
        cmd.add_argument("--test-fraction", type=float, default=None, help="default 0.2 (vegas: the card's)")
        cmd.add_argument("--val-fraction", type=float, default=None, help="of train; 0 for no val; default 0.1")
        cmd.add_argument("--seed", type=int, default=None, help="split seed; default 0")
    folder = sub.choices["folder"]
    folder.add_argument("--dataset", type=str, default="folder", help="dataset name written in the manifest")
    labels = folder.add_mutually_exclusive_group()
    labels.add_argument("--classes", type=str, nargs="+", default=None, help="allowed labels, in label_id order")
    labels.add_argument("--card", type=str, default=None, help="card name or path giving the classes")
    folder.add_argument("--times", type=str, choices=("clip", "event"), default="clip",
                        help="a CSV's start/end: where to cut the clip, or the event in the file")
    for cmd in sub.choices.values():
        cmd.add_argument("--out", type=Path, required=True, help="manifest to write (.parquet)")
    return parser


def _build(args: argparse.Namespace) -> ManifestBuild:
    # Imported here: the builders import this module for the schema.
    from pipeline import ave, cards, folder, vegas

    if args.command == "ave":
        card = cards.load_card("ave")
        annotations = args.annotations or cards.fetch_source(card, "annotations", args.fetch_annotations)
        split_files = ave.split_files_in(args.splits_dir)
        checked = {"annotations": annotations} | {f"{s}_split": p for s, p in split_files.items()}
        sources = {str(p): (sha256_file(p) if args.skip_sha256 else cards.verify_source(p, card, key))
                   for key, p in checked.items()}
        build = ave.build_ave_manifest(annotations, split_files, card=card, classes=args.classes,
                                       zero_length=args.zero_length, cross_split=args.cross_split,
                                       segment_lists=args.audioset_segments)
        build.sources = sources
        return build
    overrides = {k: getattr(args, k) for k in ("test_fraction", "val_fraction", "seed") if getattr(args, k) is not None}
    if args.command == "vegas":
        card = cards.load_card("vegas")
        splitting = replace(vegas.card_splitting(card), **overrides)
        return vegas.build_vegas_manifest(args.source, card=card, split_file=args.split_file, splitting=splitting)
    splitting = folder.SplitConfig(**overrides)
    classes = args.classes or (cards.load_card(args.card).classes if args.card else None)
    return folder.build_folder_manifest(args.source, dataset=args.dataset, classes=classes,
                                        split_file=args.split_file, splitting=splitting, times=args.times)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.manifest {ave,vegas,folder} ... --out OUT.parquet``."""
    from pipeline.cards import CardError

    args = _parser().parse_args(argv)
    try:
        build = _build(args)
    except (ManifestError, CardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest, report = write_build(build, args.out)
    print_summary(build)
    print(f"wrote {manifest} ({len(build.frame)} clips) and {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
