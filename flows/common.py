"""Prefect plumbing shared by the flows: the output root, cache keys, result storage, artifacts, task runners.

A task's cache key is a hash of what decides its output (:mod:`pipeline.io.digest`: its input
rows or input files' bytes, its config, and the source of the modules that compute it), never
of path strings. The same hash names the output directory, so a finished stage is also found on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote
from uuid import UUID

from flows.processes import served_files

if TYPE_CHECKING:  # imported where used, so a CLI's --help answers before pandas and Prefect load
    from prefect import Flow
    from prefect.cache_policies import CachePolicy
    from prefect.context import TaskRunContext
    from prefect.task_runners import TaskRunner

OUTPUTS_ENV = "HSCMAE_OUTPUTS"  # the output root, when no flag names one
RESULTS_DIR = ".prefect-results"  # per-output-root Prefect result and cache records
DASK_LOGGING_ENV = "DASK_LOGGING__DISTRIBUTED"  # Dask's log level (flows/__init__ sets "warning")
FILES_URL_ENV = "HSCMAE_FILES_URL"  # base URL of the local file server (set by `flows.local up`)
FILES_ROOT_ENV = "HSCMAE_FILES_ROOT"  # the folder it serves
STOP_DEADLINE_S = 5.0  # on SIGTERM or Ctrl-C: the most the run states may take before the children are ended
CHILD_GRACE_S = 3.0  # a child process's time to end on SIGTERM before it is killed
R = TypeVar("R")


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


def add_runner_arguments(parser: argparse.ArgumentParser, *, threads: int = 2) -> None:
    """``--task-runner thread|dask``, ``--dask-address``, ``--dask-workers`` and ``--threads`` flags."""
    parser.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                        help="where tasks run: threads of this process, or a Dask cluster")
    parser.add_argument("--dask-address", help="scheduler address (tcp://host:8786); default: a local cluster")
    parser.add_argument("--dask-workers", type=int, default=2, help="workers of the local Dask cluster")
    parser.add_argument("--threads", type=int, default=threads, help="task threads of the thread runner")
    add_verbose_argument(parser)


def check_runner_arguments(args: argparse.Namespace) -> None:
    """:func:`add_runner_arguments`' counts at least 1: a pool of no threads fails only once the flow runs, and a
    local Dask cluster of no workers waits forever; raises :class:`pipeline.io.errors.UserError` naming the flag."""
    from pipeline.io.errors import require_positive

    require_positive("--threads", args.threads)
    require_positive("--dask-workers", args.dask_workers)


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


def run_flow(flow_: Flow[..., R], parameters: Mapping[str, Any], *, debug: bool = False) -> R:
    """Run ``flow_`` with ``parameters`` for a command line: its result; when it ends Failed (or Crashed), its
    message as one ``error:`` line and exit status 1, no traceback (``debug``: the failure's traceback).

    SIGTERM and Ctrl-C stop the command within seconds. Prefect alone would first wait for every running task
    (a training run, a shard's extraction) to end, as threads cannot be interrupted. So the flow runs in a
    worker thread, and this thread, the one that receives signals, says so on stderr, marks the runs and their
    unfinished tasks Crashed, ends the process's children (the temporary Prefect server, Dask's workers) and
    exits with status 128 + the signal's number. Nothing half-written looks finished (shards and checkpoints
    are written whole, then renamed), so the same command resumes, keeping finished shards and epochs.
    """
    runs: list[UUID] = []  # this run's id, once it runs
    ended: dict[str, Any] = {}

    def remember_run_for_stop(_flow: object, flow_run: Any, _state: object) -> None:  # a hook: its id
        runs.append(flow_run.id)

    def run() -> None:
        try:
            ended["state"] = flow_.with_options(on_running=[remember_run_for_stop])(**parameters, return_state=True)
        except BaseException as exc:  # raised again in the calling thread, below
            ended["error"] = exc

    if threading.current_thread() is threading.main_thread():
        worker = threading.Thread(target=run, name=f"flow {flow_.name}", daemon=True)
        handlers = {s: signal.signal(s, partial(_stop, runs)) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            worker.start()
            worker.join()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    else:  # signals reach only the main thread: nothing to listen for here
        run()
    if "error" in ended:
        raise ended["error"]
    state = ended["state"]
    if not state.is_completed():
        if debug:
            state.result()  # raises the failure, with its traceback
        print(f"error: {flow_.name} ended {state.name}: {state.message}", file=sys.stderr)
        raise SystemExit(1)
    return state.result()


def _stop(runs: list[UUID], signum: int, _frame: object) -> None:
    """:func:`run_flow`'s signal handler: say so, mark ``runs`` Crashed (at most :data:`STOP_DEADLINE_S`), end the
    children, exit 128 + ``signum``. A second signal exits at once."""
    import httpx

    code, name = 128 + signum, signal.Signals(signum).name
    for again in (signal.SIGTERM, signal.SIGINT):
        signal.signal(again, lambda *_: os._exit(code))
    print(f"stopping on {name}: the work finished so far is kept; run the same command again to resume",
          file=sys.stderr, flush=True)
    deadline = threading.Timer(STOP_DEADLINE_S, _exit, (code,))
    deadline.daemon = True
    deadline.start()
    try:
        if runs:
            crash_runs(runs, f"stopped by {name}")
    except (OSError, httpx.HTTPError) as exc:  # no server to tell (Ctrl-C also ends a temporary one): stop anyway
        print(f"stopping: the runs could not be marked Crashed ({exc})", file=sys.stderr)
    finally:
        _exit(code)


def _exit(code: int) -> None:
    """End the children, flush, and leave now: running task threads are not waited for."""
    end_children()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def crash_runs(runs: list[UUID], message: str) -> None:
    """Mark the flow runs ``runs``, their subflow runs and their tasks that have not ended Crashed, with ``message``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId,
                                                FlowRunFilterState, FlowRunFilterStateType, TaskRunFilter,
                                                TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    with get_client(sync_client=True) as client:
        flow_runs, parents = list(runs), list(runs)
        while parents:
            parents = [r.id for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)))]
            flow_runs += parents
        open_flows = FlowRunFilter(id=FlowRunFilterId(any_=flow_runs),
                                   state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)))
        open_tasks = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished)))
        for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_runs)),
                                              task_run_filter=open_tasks):
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
        for flow_run in client.read_flow_runs(flow_run_filter=open_flows):
            client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)


def end_children(grace_s: float = CHILD_GRACE_S) -> None:
    """Terminate this process's child processes and theirs, and any started meanwhile (a Dask nanny restarts its
    worker); kill those still running after ``grace_s``."""
    import psutil

    deadline = time.monotonic() + grace_s
    while (children := psutil.Process().children(recursive=True)) and time.monotonic() < deadline:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        psutil.wait_procs(children, timeout=max(0.0, deadline - time.monotonic()))
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
