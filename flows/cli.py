"""What every flow's command line shares: runner and verbosity flags, their checks, the run-form check,
and running the flow so that a failure is one line and SIGTERM or Ctrl-C stops it within seconds."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from flows.processes import end_children
from flows.runners import DASK_LOGGING_ENV, task_runner

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.task_runners import TaskRunner

STOP_DEADLINE_S = 5.0  # on SIGTERM or Ctrl-C: the most the run states may take before the children are ended
R = TypeVar("R")


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
