"""Prefect plumbing shared by the flows: the output root, cache keys, result storage, artifact links.

A task's cache key is a hash of what decides its output (:mod:`pipeline.io.digest`: its input
rows or input files' bytes, its config, and the source of the modules that compute it), never
of path strings. The same hash names the output directory, so a finished stage is also found on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flows.processes import served_files

if TYPE_CHECKING:  # imported where used, so a CLI's --help answers before pandas and Prefect load
    from prefect.cache_policies import CachePolicy
    from prefect.context import TaskRunContext

OUTPUTS_ENV = "HSCMAE_OUTPUTS"  # the output root, when no flag names one
RESULTS_DIR = ".prefect-results"  # per-output-root Prefect result and cache records
FILES_URL_ENV = "HSCMAE_FILES_URL"  # base URL of the local file server (set by `flows.local up`)
FILES_ROOT_ENV = "HSCMAE_FILES_ROOT"  # the folder it serves


def output_root(out: str | os.PathLike[str] | None = None) -> Path:
    """The one folder every output goes under: ``out``, else ``$HSCMAE_OUTPUTS``, else ``./outputs``.

    Layout (docs/outputs.md): ``demo/`` generated videos, ``media/`` acquired sources,
    ``features/<key>/`` feature sets, ``data/`` generated feature sets, ``runs/run-<key>/``
    training runs, ``locks/`` per-shard file locks, ``.prefect-results/`` Prefect's cache records.
    """
    return Path(out if out is not None else os.environ.get(OUTPUTS_ENV) or "outputs").resolve()


def key_of(parameter: str) -> CachePolicy:
    """A cache policy whose key is the task's ``parameter``: a key string, or a job with a ``key``."""
    from prefect.cache_policies import CacheKeyFnPolicy

    def cache_key(_: TaskRunContext, inputs: dict[str, Any]) -> str:
        value = inputs[parameter]
        return value if isinstance(value, str) else value.key

    return CacheKeyFnPolicy(cache_key_fn=cache_key)


def results_dir(out_root: str | os.PathLike[str]) -> Path:
    """Where Prefect keeps result and cache records for outputs under ``out_root``.

    Keeping them beside the outputs means deleting the outputs also forgets the cache, so
    a cached task never points at a file that is gone.
    """
    return Path(out_root).resolve() / RESULTS_DIR


def file_url(path: Path) -> str:
    """A browser link to ``path``: through the local file server when it serves ``path``, else ``file://``.

    ``python -m flows.local up`` serves the output root read-only over http and tells the worker
    where (:data:`FILES_URL_ENV`, :data:`FILES_ROOT_ENV`); a command line's run in the same Prefect
    home finds that server in the stack's record while it runs (:func:`flows.processes.served_files`).
    Browsers refuse ``file://`` links from an http page, so links under that root point at the server.
    """
    path = Path(path).resolve()
    base, root = os.environ.get(FILES_URL_ENV), os.environ.get(FILES_ROOT_ENV)
    if not (base and root) and (served := served_files()) is not None:
        base, root = served
    if base and root and path.is_relative_to(Path(root).resolve()):
        relative = path.relative_to(Path(root).resolve()).as_posix()
        return base.rstrip("/") + "/" + quote(relative) + ("/" if path.is_dir() and relative else "")
    return path.as_uri()


def link_files(paths: Iterable[Path], *, key: str, title: str) -> None:
    """One Markdown artifact linking ``paths`` (plots, tables, logs); see :func:`file_url`."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## {title}", ""]
    lines += [f"- [{p.name}]({file_url(p)})" for p in paths]
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=title)


def link_dir(path: Path, *, key: str, text: str) -> None:
    """A link artifact to a local directory (a run or a feature set); see :func:`file_url`."""
    from prefect.artifacts import create_link_artifact

    create_link_artifact(link=file_url(path), link_text=text, key=key, description=text)


