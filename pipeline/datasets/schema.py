"""The manifest contract: schema, validation, errors, and the Parquet and report files.

Schema (this module owns it; one row per clip): ``clip_id`` (unique, ``[A-Za-z0-9_.-]+``),
``dataset``, ``source`` (a YouTube id, a path inside an archive, or a file path), ``source_kind``
(``youtube`` | ``archive`` | ``file``), ``clip_start_s``/``clip_end_s`` (where the clip sits in
the source; ``clip_end_s`` NaN means "to the end of the source"), ``event_start_s``/``event_end_s``
(the annotated event, relative to the clip; NaN when the dataset has no event annotation),
``label``, ``label_id``, ``split`` (``train``/``val``/``test``).

A ``file`` source is a path relative to the dataset root (never with ``..``), so a manifest
does not depend on where the data lives; the root is kept in the frame's ``attrs["root"]``
(saved in the Parquet file). An absolute ``file`` source lies outside the root and is only
written when the user opted in (``--allow-outside-root``); the opt-in is recorded in
``attrs["allow_outside_root"]``, and acquisition reads no source outside the root without it.

The builders (:mod:`pipeline.datasets.ave`, :mod:`pipeline.datasets.vegas`, :mod:`pipeline.datasets.folder`) import this
module; the command line (:mod:`pipeline.datasets.manifest`) imports them and this: the arrows run one way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from pipeline.io.atomic import atomic_path
from pipeline.io.errors import UserError
from pipeline.vocab import CLIP_ID_PATTERN, SPLITS, is_clip_id

MANIFEST_COLUMNS = (
    "clip_id", "dataset", "source", "source_kind", "clip_start_s", "clip_end_s",
    "event_start_s", "event_end_s", "label", "label_id", "split",
)
SOURCE_KINDS = ("youtube", "archive", "file")
ROOT_ATTR = "root"  # frame.attrs key: the folder that relative ``file`` sources are relative to
OUTSIDE_ROOT_ATTR = "allow_outside_root"  # frame.attrs key: True when built with ``--allow-outside-root``
_FLOAT_COLUMNS = ("clip_start_s", "clip_end_s", "event_start_s", "event_end_s")
_SHOWN_PROBLEMS = 50


@dataclass(frozen=True)
class RowProblem:
    """One bad cell: where (``line 3`` of a CSV, ``row 2`` of a frame), which column, its value, what is wrong."""

    line: str
    column: str
    value: str
    problem: str


def problems_table(problems: Sequence[RowProblem], *, shown: int = _SHOWN_PROBLEMS) -> str:
    """The problems as aligned text rows ``line | column | value | problem`` (the first ``shown``)."""
    rows = [(p.line, p.column, p.value, p.problem) for p in problems[:shown]]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    text = ["  " + " | ".join(r[i].ljust(widths[i]) for i in range(3)) + " | " + r[3] for r in rows]
    if len(problems) > shown:
        text.append(f"  ... {len(problems) - shown} more")
    return "\n".join(text)


class ManifestError(UserError):
    """A manifest or its metadata breaks the contract; the message names the file, the line and the problem.

    ``problems`` holds every bad cell found (empty when the error is not about rows).
    """

    def __init__(self, message: str, problems: Sequence[RowProblem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def of(cls, where: str, problems: Sequence[RowProblem]) -> ManifestError:
        """One error for all ``problems`` of ``where``: a single line for one, a table for several."""
        if len(problems) == 1:
            p = problems[0]
            value = f" {p.value}" if p.value else ""
            return cls(f"{where}, {p.line}: {p.column}{value}: {p.problem}", problems)
        rows = len({p.line for p in problems})
        return cls(f"{where}: {len(problems)} problems in {rows} rows (line | column | value | problem):\n"
                   + problems_table(problems), problems)


@dataclass(frozen=True)
class Anomaly:
    """Something in a dataset's metadata that a user must know about (kept or dropped per a policy).

    Args:
        kind: ``zero_length_event``, ``cross_split_video``, ``shared_video``, ``dangling_symlink``...
        subject: the clip id, YouTube id or path concerned ("" for a summary line).
        detail: what was found and what the builder did with it.
    """

    kind: str
    subject: str
    detail: str


@dataclass
class ManifestBuild:
    """A built manifest with what the builder found on the way.

    ``frame`` is a validated manifest; ``classes`` the label names in ``label_id`` order;
    ``policies`` the choices that decided which rows were kept; ``sources`` file -> sha256;
    ``skipped`` the rows left out under ``--on-bad-row skip``, with their reasons.
    """

    frame: pd.DataFrame
    anomalies: list[Anomaly]
    classes: tuple[str, ...]
    policies: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    skipped: list[RowProblem] = field(default_factory=list)

    def __post_init__(self) -> None:
        record_outside_root(self.frame, bool(self.policies.get("allow_outside_root")))


def record_outside_root(frame: pd.DataFrame, allowed: bool) -> None:
    """Record in ``frame.attrs`` that its builder was given ``--allow-outside-root`` (nothing when not)."""
    if allowed:
        frame.attrs[OUTSIDE_ROOT_ATTR] = True


def _escapes(source: str) -> bool:
    path = PurePosixPath(source.replace("\\", "/"))
    return not path.is_absolute() and ".." in path.parts


def validate_manifest(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check ``frame`` against the schema and return it with canonical dtypes and column order.

    Raises :class:`ManifestError` naming ``where`` and every offending row (``row`` counts from 0).
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{where}: missing columns {missing}")
    attrs = dict(frame.attrs)
    frame = frame.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)
    problems: list[RowProblem] = []

    def check(mask: np.ndarray | pd.Series, column: str, problem: str) -> None:
        for row in np.flatnonzero(np.asarray(mask, dtype=bool)):
            value = frame.at[int(row), column]
            problems.append(RowProblem(f"row {int(row)} (clip_id {frame.at[int(row), 'clip_id']!r})", column,
                                       repr(value if not isinstance(value, np.generic) else value.item()), problem))

    check(~frame["clip_id"].map(is_clip_id).to_numpy(dtype=bool), "clip_id",
          f"must match {CLIP_ID_PATTERN.pattern} (no path separators)")
    check(frame["clip_id"].astype("string").duplicated(), "clip_id", "duplicate clip_id")
    check(~frame["source_kind"].isin(SOURCE_KINDS), "source_kind", f"must be one of {SOURCE_KINDS}")
    check(frame["source"].isna() | (frame["source"].astype(str) == ""), "source", "source is empty")
    check((frame["source_kind"] == "file") & frame["source"].astype(str).map(_escapes), "source",
          "relative file source leaves the dataset root ('..')")
    check(frame["label"].isna() | (frame["label"].astype(str) == ""), "label", "label is absent")
    check(~frame["split"].isin(SPLITS), "split", f"must be one of {SPLITS}")
    for column in _FLOAT_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        check(values.isna() & frame[column].notna(), column, "not a number")
        frame[column] = values.astype("float64")
    check(frame["clip_start_s"].isna(), "clip_start_s", "missing")
    check(frame["clip_start_s"] < 0, "clip_start_s", "negative")
    check(frame["clip_end_s"] <= frame["clip_start_s"], "clip_end_s", "not after clip_start_s")
    check(frame["event_end_s"] < frame["event_start_s"], "event_end_s", "before event_start_s")
    label_ids = pd.to_numeric(frame["label_id"], errors="coerce")
    check(label_ids.isna() | (label_ids < 0), "label_id", "absent or negative")
    if not problems:
        frame["label_id"] = label_ids.astype("int32")
        pairs = frame[["label", "label_id"]].drop_duplicates()
        check(frame["label"].isin(pairs["label"][pairs["label"].duplicated()]), "label", "one label has several label_ids")
        check(frame["label_id"].isin(pairs["label_id"][pairs["label_id"].duplicated()]), "label_id",
              "one label_id has several labels")
    if problems:
        raise ManifestError.of(where, problems)
    for column in ("clip_id", "dataset", "source", "source_kind", "label", "split"):
        frame[column] = frame[column].astype(str)
    frame.attrs.update(attrs)
    return frame


def manifest_root(frame: pd.DataFrame) -> Path | None:
    """The folder relative ``file`` sources of ``frame`` are relative to (None when not recorded)."""
    root = frame.attrs.get(ROOT_ATTR)
    return Path(root) if root else None


def allows_outside_root(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` was built with ``--allow-outside-root`` (recorded in its attrs)."""
    return frame.attrs.get(OUTSIDE_ROOT_ATTR) is True


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validate ``frame`` and write it to Parquet atomically (its root travels in the file's metadata)."""
    frame = validate_manifest(frame, str(path))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a manifest written by :func:`write_manifest`; any unreadable file is a :class:`ManifestError`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file" if not path.exists() else f"{path}: not a file")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ManifestError(f"{path}: not a readable Parquet manifest ({type(exc).__name__})") from exc
    if frame.empty:
        raise ManifestError(f"{path}: the manifest has no rows")
    return validate_manifest(frame, str(path))


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
    """Write the manifest (Parquet) and its report (JSON: counts, policies, sources, anomalies, skipped rows)."""
    record_outside_root(build.frame, bool(build.policies.get("allow_outside_root")))
    frame = validate_manifest(build.frame, str(path))
    report = {
        "dataset": sorted(frame["dataset"].unique().tolist()),
        "rows": len(frame),
        "root": frame.attrs.get(ROOT_ATTR),
        "classes": list(build.classes),
        "counts": counts_table(frame).to_dict(orient="index"),
        "policies": build.policies,
        "sources": build.sources,
        "anomalies": [asdict(a) for a in build.anomalies],
        "skipped_rows": [asdict(p) for p in build.skipped],
    }
    with atomic_path(report_path(path)) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=str))
    return write_manifest(frame, path), report_path(path)
