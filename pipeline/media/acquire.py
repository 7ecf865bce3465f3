"""Acquisition: find or fetch each manifest row's source media; the outcome table is the availability report.

* ``file`` sources are read in place: relative paths against ``AcquireConfig.root``, else
  the manifest's root (``frame.attrs["root"]``). A source (relative or absolute) that leaves
  the root after resolving symlinks, or any source when there is no root, is not read
  (outcome ``outside_root``) unless the manifest records the builder's opt-in
  (``--allow-outside-root``, ``frame.attrs["allow_outside_root"]``).
* ``archive`` sources are members of ``AcquireConfig.archive``: a folder is read in place,
  but a member that resolves (through symlinks) outside the folder is not (``outside_root``);
  from a zip only the needed member is extracted into the cache (decord and PyAV need a
  path), once per member, so nothing else is unpacked.
* ``youtube`` sources are downloaded through yt-dlp (:mod:`pipeline.media.youtube`).

The availability table (``cache_dir/availability.parquet``) is kept between runs: what is
complete is not fetched again, and only transient failures are retried.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from pipeline.media import youtube
from pipeline.io.atomic import atomic_path
from pipeline.features.failures import Failure
from pipeline.datasets.schema import allows_outside_root, manifest_root

AVAILABILITY_COLUMNS = ("clip_id", "source_kind", "source", "outcome", "path", "local_start_s", "fetch", "message")
AVAILABLE = ("present", youtube.DOWNLOADED)
AVAILABILITY_FILE = "availability.parquet"
STAGE = "acquire"  # the stage of the failure records of sources that are not available


@dataclass(frozen=True)
class AcquireConfig:
    """Where sources are read from and fetched to."""

    cache_dir: Path = Path("cache/media")  # zip members and downloads; the availability table
    root: Path | None = None  # folder that relative ``file`` sources are relative to (default: the manifest's)
    archive: Path | None = None  # zip file or folder holding ``archive`` sources
    youtube: youtube.YouTubeConfig = field(default_factory=youtube.YouTubeConfig)


def safe_member(member: str, where: str) -> PurePosixPath:
    """``member`` as a relative path that stays inside its archive; raises ``ValueError`` naming ``where``."""
    path = PurePosixPath(member.replace("\\", "/"))
    if not member or path.is_absolute() or ".." in path.parts or ":" in member:
        raise ValueError(f"{where}: archive member {member!r} must be a relative path inside the archive")
    return path


def _local_row(row: object, path: Path | None, message: str) -> dict[str, object]:
    return {"clip_id": row.clip_id, "source_kind": row.source_kind, "source": row.source,
            "outcome": "present" if path is not None else "missing", "path": str(path) if path else "",
            "local_start_s": 0.0, "fetch": "", "message": message}


def _outside(row: object, message: str) -> dict[str, object]:
    return {**_local_row(row, None, message), "outcome": "outside_root"}


def _member_path(archive: Path, member: PurePosixPath) -> tuple[Path, str]:
    """A folder archive's member path, and why it is not read ("" when it stays inside the folder)."""
    path = archive / member
    if path.resolve().is_relative_to(archive.resolve()):
        return path, ""
    return path, f"{path} resolves to {path.resolve()}, outside the archive folder {archive}"


def content_path(row: object, config: AcquireConfig) -> tuple[Path, str | None] | None:
    """The local file whose bytes decide a row's clip, and the member inside it when that file is a zip.

    ``(file, None)`` for a file row or a folder-archive member; ``(zip, member)`` for a zip archive
    member, so a changed zip changes only the keys of the members that changed. None for YouTube,
    and for a folder-archive member that resolves outside the folder (it is never read).
    """
    if row.source_kind == "file":
        path = Path(row.source)
        return (path if path.is_absolute() or config.root is None else Path(config.root) / path), None
    if row.source_kind == "archive" and config.archive is not None:
        archive = Path(config.archive)
        member = safe_member(str(row.source), f"manifest row {row.clip_id!r}")
        if not archive.is_dir():
            return archive, str(member)
        path, outside = _member_path(archive, member)
        return None if outside else (path, None)
    return None


def source_locations(manifest: pd.DataFrame, config: AcquireConfig) -> list[str]:
    """Where each row's local source resolves now (symlinks followed; "" for YouTube rows and for folder-archive
    members outside the folder), in row order: the file whose bytes :func:`content_path` names.

    An acquisition's result (paths, checked to stay inside the root) stands only while these are unchanged, so
    a file replaced by a symlink after a build (one that leaves the root, say) is acquired, and refused, again.
    """
    return ["" if (found := content_path(row, config)) is None else str(found[0].resolve())
            for row in manifest.itertuples(index=False)]


def _find_file(row: object, root: Path | None, allow_outside_root: bool = False) -> dict[str, object]:
    """Availability of a ``file`` row; outside the root (or with no root) only with the manifest's opt-in."""
    path = Path(row.source)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not allow_outside_root:
        if root is None:
            return _outside(row, f"{path}: the manifest records no dataset root (attrs['root']) and was not built "
                                 "with --allow-outside-root")
        if not path.resolve().is_relative_to(root.resolve()):
            return _outside(row, f"{path} resolves to {path.resolve()}, outside the dataset root {root} "
                                 "(the manifest was not built with --allow-outside-root)")
    return _local_row(row, path if path.is_file() else None, "" if path.is_file() else f"no file {path}")


def _from_archive(rows: list[object], config: AcquireConfig) -> list[dict[str, object]]:
    """Resolve ``archive`` rows: in place from a folder, or by extracting single zip members."""
    if config.archive is None:
        return [_local_row(r, None, "no archive configured (AcquireConfig.archive)") for r in rows]
    archive = Path(config.archive)
    members = [safe_member(str(r.source), f"manifest row {r.clip_id!r}") for r in rows]
    if archive.is_dir():
        out = []
        for row, member in zip(rows, members):
            path, outside = _member_path(archive, member)
            out.append(_outside(row, outside) if outside else
                       _local_row(row, path if path.is_file() else None, "" if path.is_file() else f"no file {path}"))
        return out
    out = []
    cache = Path(config.cache_dir) / archive.stem
    with zipfile.ZipFile(archive) as bundle:
        names = set(bundle.namelist())
        for row, member in tqdm(list(zip(rows, members)), desc=f"extract {archive.name}", unit="clip", disable=None):
            if str(member) not in names:
                out.append(_local_row(row, None, f"{archive}: no member {member}"))
                continue
            target = cache / member
            if not target.is_file():  # extracted atomically, so an existing file is complete
                with bundle.open(str(member)) as source, atomic_path(target) as tmp, open(tmp, "wb") as sink:
                    shutil.copyfileobj(source, sink, length=1 << 20)
            out.append(_local_row(row, target, ""))
    return out


def acquire(manifest: pd.DataFrame, config: AcquireConfig = AcquireConfig()) -> pd.DataFrame:
    """Make every manifest row's source available locally; return and save the availability table.

    Columns: :data:`AVAILABILITY_COLUMNS`; ``outcome`` is ``present``/``downloaded`` when the
    clip can be segmented, else why not (``missing`` or a :data:`pipeline.media.youtube.OUTCOMES` value).
    """
    cache = Path(config.cache_dir)
    table_path = cache / AVAILABILITY_FILE
    previous = pd.read_parquet(table_path) if table_path.is_file() else None
    rows = list(manifest.itertuples(index=False))
    root = config.root or manifest_root(manifest)
    outside_ok = allows_outside_root(manifest)
    results = [_find_file(r, root, outside_ok) for r in rows if r.source_kind == "file"]
    results += _from_archive([r for r in rows if r.source_kind == "archive"], config)
    online = manifest[manifest["source_kind"] == "youtube"]
    if len(online):
        old = previous[previous["source_kind"] == "youtube"] if previous is not None else None
        table = youtube.download_all(online, cache / "youtube", config.youtube, previous=old)
        table["source_kind"] = "youtube"
        results += table.to_dict("records")
    frame = pd.DataFrame(results, columns=list(AVAILABILITY_COLUMNS))
    order = {clip_id: i for i, clip_id in enumerate(manifest["clip_id"])}
    frame = frame.sort_values("clip_id", key=lambda ids: ids.map(order)).reset_index(drop=True)
    write_availability(frame, table_path)
    return frame


def write_availability(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the availability table atomically, as CSV when ``path`` ends in ``.csv``, else Parquet."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".csv"):
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return Path(path)


def available_sources(availability: pd.DataFrame) -> tuple[dict[str, str], dict[str, float]]:
    """Local path and local start time (source seconds) of each clip that can be segmented."""
    ok = availability[availability["outcome"].isin(AVAILABLE)]
    return dict(zip(ok["clip_id"], ok["path"])), dict(zip(ok["clip_id"], ok["local_start_s"].astype(float)))


def availability_failures(availability: pd.DataFrame) -> list[Failure]:
    """One ``acquire`` failure record per clip that is not available."""
    bad = availability[~availability["outcome"].isin(AVAILABLE)]
    return [Failure(clip_id=r.clip_id, stage=STAGE, kind=r.outcome, message=f"{r.source}: {r.message}")
            for r in bad.itertuples(index=False)]
