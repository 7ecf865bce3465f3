"""``python -m pipeline.datasets.manifest {ave,vegas,folder} ... --out OUT.parquet``: build a manifest.

Writes the manifest with ``OUT.report.json`` and prints counts by class and split and the
anomalies. The contract (schema, validation, errors) lives in :mod:`pipeline.datasets.schema`;
this module is the command line only: it imports the builders, which import the contract.
Bad input is one line ``error: <file>[, line N]: <what is wrong>`` (a table when several rows
are bad) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from pipeline.datasets import ave, cards, folder, vegas
from pipeline.io.digest import sha256_file
from pipeline.io.errors import UserError, add_debug_argument, require_dir, require_file, user_errors
from pipeline.datasets.schema import Anomaly, ManifestBuild, counts_table, problems_table, write_build


def print_summary(build: ManifestBuild, *, shown: int = 5, stream: TextIO | None = None) -> None:
    """Print counts by split and class, the skipped rows, then the anomalies by kind (the first ``shown`` of each)."""
    stream = stream or sys.stdout
    print(counts_table(build.frame).to_string(), file=stream)
    if build.skipped:
        print(f"\nskipped rows: {len(build.skipped)} problems (line | column | value | problem)", file=stream)
        print(problems_table(build.skipped), file=stream)
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
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m pipeline.datasets.manifest", description=(
        "Build a manifest (Parquet) and its report (<out>.report.json); print counts and anomalies."))
    sub = parser.add_subparsers(dest="command", required=True)

    ave = sub.add_parser("ave", allow_abbrev=False, help="AVE from Annotations.txt and the official split files")
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
        cmd = sub.add_parser(name, allow_abbrev=False, help=help_text)
        cmd.add_argument("--source", type=Path, required=True,
                         help="dataset root (class folders)" + (" or a labels CSV" if name == "folder" else ""))
        cmd.add_argument("--split-file", type=Path, default=None, help="CSV with columns (path|clip_id),split")
        cmd.add_argument("--test-fraction", type=float, default=None, help="default 0.2 (vegas: the card's)")
        cmd.add_argument("--val-fraction", type=float, default=None, help="of train; 0 for no val; default 0.1")
        cmd.add_argument("--seed", type=int, default=None, help="split seed; default 0")
        cmd.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                         help="error (default): report every bad row and write nothing; skip: write the good "
                              "rows and list every skipped row with its reason in the report")
        cmd.add_argument("--allow-outside-root", action="store_true",
                         help="accept sources (or symlink targets) outside the dataset root")
    folder = sub.choices["folder"]
    folder.add_argument("--dataset", type=str, default="folder", help="dataset name written in the manifest")
    labels = folder.add_mutually_exclusive_group()
    labels.add_argument("--classes", type=str, nargs="+", default=None, help="allowed labels, in label_id order")
    labels.add_argument("--card", type=str, default=None, help="card name or path giving the classes")
    folder.add_argument("--times", type=str, choices=("clip", "event"), default="clip",
                        help="a CSV's start/end: where to cut the clip, or the event in the file")
    for cmd in sub.choices.values():
        cmd.add_argument("--out", type=Path, required=True, help="manifest to write (.parquet)")
        add_debug_argument(cmd)
    return parser


def _check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, with one line, on missing or empty input files and out-of-range numbers."""
    if args.command == "ave":
        if args.annotations is not None:
            require_file(args.annotations, "annotations file")
        require_dir(args.splits_dir, "split-files folder")
        for path in args.audioset_segments:
            require_file(path, "segment list")
    else:
        if not Path(args.source).is_dir():
            require_file(args.source, "labels CSV or dataset folder")
        if args.split_file is not None:
            require_file(args.split_file, "split file")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(args, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise UserError(f"--{name.replace('_', '-')}: must be in [0, 1), got {value}")
    if args.out.suffix != ".parquet":
        raise UserError(f"{args.out}: the manifest must be a .parquet file")


def _build(args: argparse.Namespace) -> ManifestBuild:
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
        return vegas.build_vegas_manifest(args.source, card=card, split_file=args.split_file, splitting=splitting,
                                          on_bad_row=args.on_bad_row, allow_outside_root=args.allow_outside_root)
    splitting = folder.SplitConfig(**overrides)
    classes = args.classes or (cards.load_card(args.card).classes if args.card else None)
    return folder.build_folder_manifest(args.source, dataset=args.dataset, classes=classes,
                                        split_file=args.split_file, splitting=splitting, times=args.times,
                                        on_bad_row=args.on_bad_row, allow_outside_root=args.allow_outside_root)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.datasets.manifest {ave,vegas,folder} ... --out OUT.parquet``."""
    args = _parser().parse_args(argv)
    with user_errors(args.debug):
        _check_inputs(args)
        build = _build(args)
        manifest, report = write_build(build, args.out)
    print_summary(build)
    print(f"wrote {manifest} ({len(build.frame)} clips) and {report}")
    return 0


if __name__ == "__main__":
    # the importable module's copy, so its classes are the ones the builders raise
    from pipeline.datasets.manifest import main as module_main

    raise SystemExit(module_main())
