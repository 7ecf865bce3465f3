"""Import published feature files into feature shards, so training runs on them unchanged.

Two layouts:

- AVE's release: ``audio_feature.h5`` and ``visual_feature.h5``, each with dataset
  ``avadataset``: audio ``[N, 10, 128]`` (VGGish), visual ``[N, 10, 7, 7, 512]`` (VGG-19
  pool5, mean-pooled here over the 7x7 grid to ``[N, 10, 512]``), rows in ``Annotations.txt``
  order; labels and splits come from an AVE manifest. The visual file (about 5.8 GB) is read
  in chunks of rows, so memory stays bounded.
- One HDF5 with ``audio_train``, ``visual_train``, ``lab_train`` and the same for ``test``:
  ``[N, D]`` per clip or ``[N, T, D]`` per second; labels one-hot ``[N, C]`` or integers ``[N]``.
  The file does not say what produced its features, so the user names the extractors
  (``--audio-extractor``, ``--visual-extractor``); the defaults, VGGish audio and Inception visual,
  are those of the authors' VEGAS release in this layout (128-d and 1,024-d, one vector per clip).

A row whose values are all equal (all zeros, say) carries no signal and usually marks a
missing clip: such rows are refused by default (``constant_rows="keep"`` imports them and
lists them). Label widths must agree between splits. Errors name the input file and row.

Shards hold a fixed number of clips and the whole output directory appears at once: on any
error nothing is left behind. The shard metadata names the source files and their sha256
in place of extractor weights, which were not ours.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.datasets.ave import ave_clip_id, read_ave_lines
from pipeline.datasets.cards import DatasetCard, FeatureSpec, load_card
from pipeline.io.digest import sha256_file
from pipeline.io.errors import UserError, add_debug_argument, require_file, user_errors
from pipeline.datasets.schema import read_manifest
from pipeline.features.shards import ClipFeatures, ShardError, write_shard
from pipeline.datasets.splits import carve_val

SHARD_SIZE = 1024
READ_CHUNK = 64          # AVE rows per HDF5 read: 64 x 10 x 7 x 7 x 512 float32 = 64 MB
SINGLE_FILE_SPLITS = ("train", "test")
SINGLE_FILE_DIMS = {"audio": 128, "visual": 1024}
SINGLE_FILE_EXTRACTORS = {"audio": "vggish", "visual": "inception"}  # the authors' VEGAS file in this layout


class FeatureImportError(UserError):
    """A feature file cannot be imported; the message names the file, the row and the problem."""


ConstantRows = Literal["refuse", "keep"]


@contextmanager
def staged_dir(out_dir: str | os.PathLike[str], source: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir``; on success it becomes ``out_dir``.

    ``out_dir`` must not exist or be empty. On any exception the temporary directory is
    removed, so a failed import leaves nothing behind; a shard error names ``source`` (the
    input), never the temporary directory.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FeatureImportError(f"{out}: already exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        try:
            yield staging
        except ShardError as exc:
            raise FeatureImportError(f"{source}: " + str(exc).replace(f"{staging}{os.sep}", "")) from None
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


class ShardWriter:
    """Collects clips and writes ``shard-00000.parquet``, ``shard-00001.parquet``... of ``size`` clips."""

    def __init__(self, *, directory: Path, meta: Mapping[str, Any], size: int = SHARD_SIZE) -> None:
        self.directory, self.meta, self.size = directory, meta, size
        self.pending: list[ClipFeatures] = []
        self.paths: list[Path] = []

    def add(self, clip: ClipFeatures) -> None:
        self.pending.append(clip)
        if len(self.pending) == self.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.paths.append(write_shard(self.directory / f"shard-{len(self.paths):05d}.parquet", self.pending, self.meta))
            self.pending = []


def _check_finite(values: np.ndarray, where: str, rows: np.ndarray, names: Sequence[str]) -> None:
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FeatureImportError(f"{where}, row {int(rows[i])} (clip {names[i]!r}): non-finite values (NaN or inf)")


def _check_constant(values: np.ndarray, where: str, rows: np.ndarray, names: Sequence[str], policy: ConstantRows,
                    found: list[str]) -> None:
    """Rows of ``values`` ``[N, ...]`` whose values are all equal: refused, or (``keep``) added to ``found``.

    ``rows`` numbers them in the file (as in :func:`_check_finite`), so the message names the true row.
    """
    flat = values.reshape(len(values), -1)
    constant = np.flatnonzero((flat == flat[:, :1]).all(axis=1)) if flat.shape[1] else np.arange(0)
    described = [f"{where}, row {int(rows[int(i)])} (clip {names[int(i)]!r}): every value is {flat[int(i), 0]:g}"
                 for i in constant]
    if described and policy == "refuse":
        more = f" ({len(described)} rows in all; --constant-rows keep imports them)" if len(described) > 1 \
            else " (--constant-rows keep imports it)"
        raise FeatureImportError(described[0] + more)
    found.extend(described)


@contextmanager
def open_h5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; a missing, non-HDF5 or truncated file is a :class:`FeatureImportError`."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise FeatureImportError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
    with h5:
        try:
            yield h5
        except (OSError, KeyError) as exc:  # a truncated file opens, then fails on read
            raise FeatureImportError(f"{path}: HDF5 data cannot be read, truncated or damaged? "
                                     f"({' '.join(str(exc).split())})") from None


def _dataset(h5: h5py.File, name: str, path: str | os.PathLike[str]) -> h5py.Dataset:
    if name not in h5:
        raise FeatureImportError(f"{path}: no dataset '{name}' (has {sorted(h5.keys())})")
    dataset = h5[name]
    if not isinstance(dataset, h5py.Dataset) or not np.issubdtype(dataset.dtype, np.number):
        kind = dataset.dtype if isinstance(dataset, h5py.Dataset) else "a group"
        raise FeatureImportError(f"{path}: dataset '{name}' holds {kind}, expected numbers")
    return dataset


def _published(spec: FeatureSpec, path: str | os.PathLike[str], **params: Any) -> dict[str, Any]:
    """Shard metadata of one modality read from a published file: the file's sha256 stands for the weights."""
    return {"extractor": spec.extractor, "version": spec.version,
            "params": {"source_file": Path(path).name, "dataset": spec.dataset, "shape": list(spec.shape), **params},
            "weights": sha256_file(path, progress=True)}


def _annotation_rows(manifest: pd.DataFrame, annotations: str | os.PathLike[str], card: DatasetCard) -> tuple[int, dict]:
    """The number of annotation rows and, for each manifest clip, its row: ``{row: manifest record}``."""
    rows = read_ave_lines(annotations, card.classes)
    position = {ave_clip_id(r.ytid, r.category): i for i, r in enumerate(rows)}
    missing = np.flatnonzero(~manifest["clip_id"].isin(position).to_numpy())
    if len(missing):
        raise FeatureImportError(f"{annotations}: manifest clip {manifest['clip_id'].iloc[int(missing[0])]!r} "
                                 f"is not an annotation row ({len(missing)} clips in all)")
    return len(rows), {position[r.clip_id]: r for r in manifest.itertuples(index=False)}


def import_ave_features(audio_h5: str | os.PathLike[str], visual_h5: str | os.PathLike[str],
                        manifest: pd.DataFrame, annotations: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                        *, card: DatasetCard | None = None, shard_size: int = SHARD_SIZE,
                        read_chunk: int = READ_CHUNK, constant_rows: ConstantRows = "refuse") -> list[Path]:
    """Import AVE's released features for the clips of ``manifest`` into shards under ``out_dir``.

    ``annotations`` gives the row order of the HDF5 files; each manifest clip is found by its
    clip id. Audio ``[N, 10, 128]`` is kept; visual ``[N, 10, 7, 7, 512]`` becomes its mean over
    the 7x7 grid, ``[N, 10, 512]``. Returns the shard paths (clips in annotation order).
    ``constant_rows``: refuse rows whose values are all equal, or keep them (printed).
    """
    card = card or load_card("ave")
    n_rows, wanted = _annotation_rows(manifest, annotations, card)
    specs, paths = card.features, {"audio": audio_h5, "visual": visual_h5}
    constant: list[str] = []
    with open_h5(audio_h5) as fa, open_h5(visual_h5) as fv:
        data = {"audio": _dataset(fa, specs["audio"].dataset, audio_h5), "visual": _dataset(fv, specs["visual"].dataset, visual_h5)}
        for name, path in paths.items():
            expected = (n_rows, *specs[name].shape)
            if data[name].shape != expected:
                raise FeatureImportError(f"{path}: {name} dataset '{specs[name].dataset}' has shape {data[name].shape}, "
                                         f"expected {expected} ({n_rows} rows of {annotations}, the rest from the card)")
        meta = {"audio": _published(specs["audio"], audio_h5),
                "visual": _published(specs["visual"], visual_h5, pooling="mean over the 7x7 grid"),
                "dataset": card.name, "source": "published features"}
        with staged_dir(out_dir, audio_h5) as staging:
            writer = ShardWriter(directory=staging, meta=meta, size=shard_size)
            for start in tqdm(range(0, n_rows, read_chunk), desc="import AVE features", unit="chunk", disable=None):
                stop = min(start + read_chunk, n_rows)
                chosen = np.array([i for i in range(start, stop) if i in wanted], dtype=np.int64)
                if not len(chosen):
                    continue
                names = [wanted[i].clip_id for i in chosen]
                # One chunk of rows at a time: [chunk, 10, 128] and [chunk, 10, 7, 7, 512] -> [chunk, 10, 512].
                audio = data["audio"][start:stop][chosen - start].astype(np.float32)
                visual = data["visual"][start:stop][chosen - start].mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
                _check_finite(audio, str(audio_h5), chosen, names)
                _check_finite(visual, str(visual_h5), chosen, names)
                _check_constant(audio, str(audio_h5), chosen, names, constant_rows, constant)
                _check_constant(visual, str(visual_h5), chosen, names, constant_rows, constant)
                for k, i in enumerate(chosen):
                    row = wanted[int(i)]
                    writer.add(ClipFeatures(clip_id=row.clip_id, label=row.label, label_id=int(row.label_id),
                                            split=row.split, audio=audio[k], visual=visual[k]))
            writer.flush()
    _print_constant(constant)
    return [Path(out_dir) / p.name for p in writer.paths]


def _print_constant(found: Sequence[str]) -> None:
    if found:
        print(f"warning: {len(found)} constant feature rows imported (--constant-rows keep):\n  "
              + "\n  ".join(found[:20]) + ("\n  ..." if len(found) > 20 else ""), file=sys.stderr)


def _labels(raw: np.ndarray, path: str | os.PathLike[str], name: str) -> tuple[np.ndarray, int | None]:
    """Integer labels ``[N]`` from one-hot ``[N, C]`` (returns ``C``) or integers ``[N]`` (returns None)."""
    if raw.ndim == 2 and raw.shape[1] > 1:
        ones = (raw == 1).sum(axis=1)
        bad = np.flatnonzero((ones != 1) | ((raw != 0) & (raw != 1)).any(axis=1))
        if len(bad):
            raise FeatureImportError(f"{path}: {name} row {int(bad[0])} is not one-hot ({raw[int(bad[0])].tolist()})")
        return raw.argmax(axis=1).astype(np.int64), raw.shape[1]
    if raw.ndim > 2 or (raw.ndim == 2 and raw.shape[1] != 1):
        raise FeatureImportError(f"{path}: {name} has shape {raw.shape}, expected [N] or one-hot [N, C]")
    flat = raw.reshape(len(raw))
    bad = np.flatnonzero(~np.isfinite(flat) | (flat < 0) | (flat != np.round(flat)))
    if len(bad):
        raise FeatureImportError(f"{path}: {name} row {int(bad[0])} is not a class index ({flat[int(bad[0])]!r})")
    return flat.astype(np.int64), None


def _per_second(array: np.ndarray, path: str | os.PathLike[str], name: str, dim: int) -> np.ndarray:
    """``[N, D]`` -> ``[N, 1, D]``; ``[N, T, D]`` kept; anything else, ``T = 0`` or ``D != dim``, is an error."""
    if array.ndim not in (2, 3) or array.shape[-1] != dim or (array.ndim == 3 and array.shape[1] == 0):
        raise FeatureImportError(f"{path}: {name} has shape {array.shape}, expected [N, {dim}] or [N, T>0, {dim}]")
    return (array[:, None, :] if array.ndim == 2 else array).astype(np.float32)


@dataclass
class _SinglePart:
    """One split of a single-file HDF5: audio ``[N, T, Da]``, visual ``[N, T, Dv]``, labels ``[N]``."""

    audio: np.ndarray
    visual: np.ndarray
    labels: np.ndarray
    width: int | None  # C for one-hot labels


def _read_single_part(h5: h5py.File, path: str | os.PathLike[str], split: str, dims: Mapping[str, int],
                      constant_rows: ConstantRows, constant: list[str]) -> _SinglePart:
    audio = _per_second(_dataset(h5, f"audio_{split}", path)[()], path, f"audio_{split}", dims["audio"])
    visual = _per_second(_dataset(h5, f"visual_{split}", path)[()], path, f"visual_{split}", dims["visual"])
    labels, width = _labels(_dataset(h5, f"lab_{split}", path)[()], path, f"lab_{split}")
    if not len(audio) == len(visual) == len(labels):
        raise FeatureImportError(f"{path}: {split} has {len(audio)} audio, {len(visual)} visual and {len(labels)} label rows")
    names = [f"{split}_{i:05d}" for i in range(len(labels))]
    _check_finite(audio, f"{path}: audio_{split}", np.arange(len(labels)), names)
    _check_finite(visual, f"{path}: visual_{split}", np.arange(len(labels)), names)
    _check_constant(audio, f"{path}: audio_{split}", np.arange(len(labels)), names, constant_rows, constant)
    _check_constant(visual, f"{path}: visual_{split}", np.arange(len(labels)), names, constant_rows, constant)
    return _SinglePart(audio, visual, labels, width)


def import_single_file(h5_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                       classes: Sequence[str] | None = None, dataset: str = "published",
                       dims: Mapping[str, int] = SINGLE_FILE_DIMS,
                       extractors: Mapping[str, str] = SINGLE_FILE_EXTRACTORS, val_fraction: float = 0.1,
                       seed: int = 0, shard_size: int = SHARD_SIZE,
                       constant_rows: ConstantRows = "refuse") -> list[Path]:
    """Import one HDF5 with ``{audio,visual,lab}_{train,test}`` into shards under ``out_dir``.

    Clip ids are ``<split>_<row>`` of the file (``train_00012``); a stratified ``val_fraction``
    of train becomes val (0 keeps none). ``classes`` names the label ids (default ``class_<i>``);
    with one-hot labels their number must equal ``C``; one-hot widths must agree between splits.
    ``extractors`` names what produced each modality's features (the shard metadata and every table say
    ``<name> (published features)``; default: the authors' VEGAS file, VGGish and Inception).
    ``constant_rows``: refuse rows whose values are all equal, or keep them (printed).
    """
    constant: list[str] = []
    with open_h5(h5_path) as h5:
        parts = {split: _read_single_part(h5, h5_path, split, dims, constant_rows, constant)
                 for split in SINGLE_FILE_SPLITS}
    widths = [p.width for p in parts.values() if p.width is not None]
    if len(set(widths)) > 1:
        raise FeatureImportError(f"{h5_path}: one-hot label widths differ between splits ("
                                 + ", ".join(f"lab_{s} {p.width}" for s, p in parts.items()) + ")")
    n_classes = max(widths + [int(p.labels.max()) + 1 for p in parts.values() if len(p.labels)])
    if classes is None:
        classes = [f"class_{i}" for i in range(n_classes)]
    elif len(classes) < n_classes or (widths and len(classes) != n_classes):
        raise FeatureImportError(f"{h5_path}: labels imply {n_classes} classes but {len(classes)} class names were given")
    names = [f"{s}_{i:05d}" for s in SINGLE_FILE_SPLITS for i in range(len(parts[s].labels))]
    labels = np.concatenate([parts[s].labels for s in SINGLE_FILE_SPLITS])
    split = np.array([s for s in SINGLE_FILE_SPLITS for _ in parts[s].labels], dtype=object)
    if val_fraction > 0:
        try:
            split = carve_val(split, labels, val_fraction, seed)
        except ValueError as exc:
            raise FeatureImportError(f"{h5_path}: carving val from lab_train: {exc}; change --val-fraction "
                                     "(0 for no val)") from None
    digest = sha256_file(h5_path, progress=True)
    meta = {modality: {"extractor": f"{extractors[modality]} (published features)", "version": "published",
                       "params": {"source_file": Path(h5_path).name,
                                  "datasets": [f"{modality}_{s}" for s in SINGLE_FILE_SPLITS]},
                       "weights": digest}
            for modality in SINGLE_FILE_EXTRACTORS}
    meta |= {"dataset": dataset, "source": "published features", "split": {"val_from_train": val_fraction, "seed": seed}}
    audio = [a for s in SINGLE_FILE_SPLITS for a in parts[s].audio]
    visual = [v for s in SINGLE_FILE_SPLITS for v in parts[s].visual]
    with staged_dir(out_dir, h5_path) as staging:
        writer = ShardWriter(directory=staging, meta=meta, size=shard_size)
        for i, name in enumerate(names):
            writer.add(ClipFeatures(clip_id=name, label=classes[int(labels[i])], label_id=int(labels[i]),
                                    split=str(split[i]), audio=audio[i], visual=visual[i]))
        writer.flush()
    _print_constant(constant)
    return [Path(out_dir) / p.name for p in writer.paths]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m pipeline.features.import_features",
                                     description="Import published feature files into feature shards.")
    sub = parser.add_subparsers(dest="layout", required=True)
    ave = sub.add_parser("ave", allow_abbrev=False, help="AVE's audio_feature.h5 + visual_feature.h5 with an AVE manifest")
    ave.add_argument("--audio", type=Path, required=True, help="audio_feature.h5 ([N, 10, 128])")
    ave.add_argument("--visual", type=Path, required=True, help="visual_feature.h5 ([N, 10, 7, 7, 512])")
    ave.add_argument("--manifest", type=Path, required=True, help="manifest from `python -m pipeline.datasets.manifest ave`")
    ave.add_argument("--annotations", type=Path, required=True, help="the Annotations.txt the features follow")
    ave.add_argument("--read-chunk", type=int, default=READ_CHUNK, help="rows per HDF5 read (bounds memory)")
    single = sub.add_parser("single", allow_abbrev=False, help="one HDF5 with {audio,visual,lab}_{train,test}")
    single.add_argument("--h5", type=Path, required=True)
    names = single.add_mutually_exclusive_group()
    names.add_argument("--classes", type=str, nargs="+", default=None, help="class names in label order")
    names.add_argument("--card", type=str, default=None, help="card name or path giving the class names")
    single.add_argument("--dataset", type=str, default="published", help="dataset name for the shard metadata")
    single.add_argument("--audio-dim", type=int, default=SINGLE_FILE_DIMS["audio"])
    single.add_argument("--visual-dim", type=int, default=SINGLE_FILE_DIMS["visual"])
    for modality in ("audio", "visual"):
        single.add_argument(f"--{modality}-extractor", default=SINGLE_FILE_EXTRACTORS[modality], metavar="NAME",
                            help=f"what produced the {modality} features, as tables name it (default "
                                 f"{SINGLE_FILE_EXTRACTORS[modality]}: the authors' VEGAS file)")
    single.add_argument("--val-fraction", type=float, default=0.1, help="of train, stratified; 0 for none")
    single.add_argument("--seed", type=int, default=0)
    for cmd in (ave, single):
        cmd.add_argument("--out", type=Path, required=True, help="new (or empty) shard directory")
        cmd.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="clips per shard")
        cmd.add_argument("--constant-rows", choices=("refuse", "keep"), default="refuse",
                         help="feature rows whose values are all equal (all zeros): refuse (default) or keep")
        add_debug_argument(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.features.import_features {ave,single} ... --out DIR``; prints clips per split."""
    args = _parser().parse_args(argv)
    with user_errors(args.debug):
        for path in ([args.audio, args.visual, args.annotations] if args.layout == "ave" else [args.h5]):
            require_file(path, "input file")
        if args.shard_size < 1:
            raise FeatureImportError(f"--shard-size: must be >= 1, got {args.shard_size}")
        if args.layout == "ave":
            paths = import_ave_features(args.audio, args.visual, read_manifest(args.manifest), args.annotations,
                                        args.out, shard_size=args.shard_size, read_chunk=args.read_chunk,
                                        constant_rows=args.constant_rows)
        else:
            if not 0.0 <= args.val_fraction < 1.0:
                raise FeatureImportError(f"--val-fraction: must be in [0, 1), got {args.val_fraction}")
            for flag, name in (("--audio-extractor", args.audio_extractor), ("--visual-extractor", args.visual_extractor)):
                if not name.strip():
                    raise FeatureImportError(f"{flag}: must name what produced the features, got {name!r}")
            classes = args.classes or (load_card(args.card).classes if args.card else None)
            paths = import_single_file(args.h5, args.out, classes=classes, dataset=args.card or args.dataset,
                                       dims={"audio": args.audio_dim, "visual": args.visual_dim},
                                       extractors={"audio": args.audio_extractor, "visual": args.visual_extractor},
                                       val_fraction=args.val_fraction, seed=args.seed, shard_size=args.shard_size,
                                       constant_rows=args.constant_rows)
    splits = pd.concat([pd.read_parquet(p, columns=["split"]) for p in paths])["split"].value_counts()
    print(f"wrote {len(paths)} shards to {args.out}: " + ", ".join(f"{s} {n}" for s, n in splits.items()))
    return 0


if __name__ == "__main__":
    from pipeline.features.import_features import main as module_main  # the importable module's error classes

    raise SystemExit(module_main())
