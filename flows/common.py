"""Prefect plumbing shared by the flows: content hashes, cache keys, result storage, artifacts.

A task's cache key is a hash of what decides its output (its input rows or input files'
bytes, its config, and the source of the modules that compute it), never of path strings.
The same hash names the output directory, so a finished stage is also found on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:  # imported where used, so a CLI's --help answers before pandas and Prefect load
    import pandas as pd
    from prefect import Flow
    from prefect.cache_policies import CachePolicy
    from prefect.context import TaskRunContext
    from prefect.task_runners import TaskRunner

OUTPUTS_ENV = "HSCMAE_OUTPUTS"  # the output root, when no flag names one
VISUAL_MODELS = ("resnet50", "resnet152", "vit_b16", "vit_s16")  # extractors.visual's frame extractors
KEY_LENGTH = 16  # hex characters of a sha256 used in directory names
RESULTS_DIR = ".prefect-results"  # per-output-root Prefect result and cache records
DASK_LOGGING_ENV = "DASK_LOGGING__DISTRIBUTED"  # Dask's log level (flows/__init__ sets "warning")
FILES_URL_ENV = "HSCMAE_FILES_URL"  # base URL of the local file server (set by `flows.local up`)
FILES_ROOT_ENV = "HSCMAE_FILES_ROOT"  # the folder it serves


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and pydantic models become dicts, paths strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def output_root(out: str | os.PathLike[str] | None = None) -> Path:
    """The one folder every output goes under: ``out``, else ``$HSCMAE_OUTPUTS``, else ``./outputs``.

    Layout (docs/outputs.md): ``demo/`` generated videos, ``media/`` acquired sources,
    ``features/<key>/`` feature sets, ``data/`` generated feature sets, ``runs/run-<key>/``
    training runs, ``locks/`` per-shard file locks, ``.prefect-results/`` Prefect's cache records.
    """
    return Path(out if out is not None else os.environ.get(OUTPUTS_ENV) or "outputs").resolve()


def digest(*parts: Any) -> str:
    """sha256 (hex) of ``parts`` as canonical JSON; dataclasses, models, paths and numpy scalars allowed."""
    text = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def frame_digest(frame: pd.DataFrame) -> str:
    """sha256 of a frame's rows (column names, order and values); NaN hashes as null."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return digest(list(frame.columns), records)


def files_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 over the bytes of ``paths`` (in the given order), e.g. every shard of a feature set."""
    from pipeline.io.digest import sha256_file

    return digest([sha256_file(p) for p in paths])


def _source_files(module: ModuleType) -> list[Path]:
    origin = Path(module.__file__ or "")
    if origin.name == "__init__.py":  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def source_digest(*modules: str) -> str:
    """sha256 of the source of the named modules (a package counts every ``.py`` under it).

    This is the "code version that matters" in a cache key: editing any of those files
    invalidates the cache, editing anything else does not.
    """
    sha = hashlib.sha256()
    for name in sorted(modules):
        for path in _source_files(importlib.import_module(name)):
            sha.update(str(path.name).encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def short(key: str) -> str:
    """The first :data:`KEY_LENGTH` hex characters of ``key``, for directory names."""
    return key[:KEY_LENGTH]


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
    where (:data:`FILES_URL_ENV`, :data:`FILES_ROOT_ENV`): browsers refuse ``file://`` links from
    an http page, so links under that root point at the server.
    """
    path = Path(path).resolve()
    base, root = os.environ.get(FILES_URL_ENV), os.environ.get(FILES_ROOT_ENV)
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


def add_runner_arguments(parser: argparse.ArgumentParser, *, threads: int = 2) -> None:
    """``--task-runner thread|dask``, ``--dask-address``, ``--dask-workers`` and ``--threads`` flags."""
    parser.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                        help="where tasks run: threads of this process, or a Dask cluster")
    parser.add_argument("--dask-address", help="scheduler address (tcp://host:8786); default: a local cluster")
    parser.add_argument("--dask-workers", type=int, default=2, help="workers of the local Dask cluster")
    parser.add_argument("--threads", type=int, default=threads, help="task threads of the thread runner")
    add_verbose_argument(parser)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: show Dask's INFO messages (hidden by default, see :mod:`flows`)."""
    parser.add_argument("--verbose", action="store_true", help="also show Dask's INFO messages")


def apply_verbosity(args: argparse.Namespace) -> None:
    """Let Dask (here and in its worker processes) log INFO when ``--verbose`` was given."""
    if args.verbose:
        os.environ[DASK_LOGGING_ENV] = "info"


def check_flow_parameters(flow_: Flow, parameters: Mapping[str, Any], *, where: str | os.PathLike[str] | None = None,
                          debug: bool = False) -> None:
    """Check ``parameters`` against ``flow_``'s typed signature, the bounds its run form enforces in the UI.

    A command line calls this before the flow: a value out of bounds is one ``error:`` line naming
    the parameter and exit status 2, before a server starts or a run exists (the flow itself would
    check only after both, with a traceback). The line starts with ``where`` (e.g. the config file the
    values came from), else the flow's name.
    """
    from prefect.exceptions import ParameterTypeError

    from pipeline.io.errors import UserError, user_errors

    quiet = logging.getLogger("prefect.flows")  # it logs every bad value with a dump of all parameters
    was_disabled = quiet.disabled
    with user_errors(debug):
        try:
            quiet.disabled = True
            flow_.validate_parameters(dict(parameters))
        except ParameterTypeError as exc:
            lines = str(exc).splitlines()  # "Flow run received invalid parameters:", then " - name: problem"
            problems = [line.strip().removeprefix("- ") for line in lines[1:]] or lines
            raise UserError(f"{where or flow_.name}: {'; '.join(problems)}") from None
        finally:
            quiet.disabled = was_disabled


def task_runner(kind: str = "thread", *, address: str | None = None, workers: int = 2,
                threads: int = 2) -> TaskRunner:
    """A task runner: Prefect's thread pool, or prefect-dask's ``DaskTaskRunner``.

    Dask runs on the scheduler at ``address``, or on a local cluster of ``workers``
    single-threaded worker processes bound to 127.0.0.1 (its dashboard on a free port).
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=threads)
    if kind != "dask":
        raise ValueError(f"task runner must be 'thread' or 'dask', got {kind!r}")
    from prefect_dask import DaskTaskRunner  # imported only when asked for

    if os.environ.get(DASK_LOGGING_ENV) != "info":
        # at shutdown a nanny gives its worker 4 s, then kills it and warns; nothing to act on
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)

    if address:
        return DaskTaskRunner(address=address)
    share_server_with_workers()
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


def share_server_with_workers() -> None:
    """Point local Dask workers (they inherit the environment) at this process's Prefect API.

    With no ``PREFECT_API_URL`` this is Prefect's temporary server (started here if need be);
    otherwise every worker process would start a temporary server of its own and report there.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url


def runner_from_arguments(args: argparse.Namespace) -> TaskRunner:
    """The task runner named by :func:`add_runner_arguments`' flags."""
    return task_runner(args.task_runner, address=args.dask_address, workers=args.dask_workers, threads=args.threads)
