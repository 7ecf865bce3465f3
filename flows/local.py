"""Start and stop a local Prefect stack: server (127.0.0.1), process work pool, deployments, worker.

    python -m flows.local up      # server + pool + deployments (prefect.yaml) + worker + file server
    python -m flows.local down    # cancel in-flight flow runs, then stop what ``up`` started

``up`` also serves the output root (``--out``, else ``$HSCMAE_OUTPUTS``, else ``./outputs``)
read-only over http on 127.0.0.1 (``flows.files``), and tells the worker where, so the
artifacts' links to plots and tables open from the UI.

Everything lives in the project-local Prefect home (``.prefect/``): the SQLite database,
and under ``.prefect/local/`` the pid files and logs of the server, the file server and the
worker. Every process is started from an argument list in its own session (``flows.processes``),
so ``down`` stops each one and nothing else. Flow runs get sessions of their own from the worker, so ``down``
first sets them Cancelling (their processes stop) and Cancelled, rather than leaving them
"Running" forever in the UI.

The server's log leaves out SQLite's retried "database is locked" errors (``flows.server_log``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows import PROJECT_ROOT
from flows.common import FILES_ROOT_ENV, FILES_URL_ENV, OUTPUTS_ENV, output_root
from flows.processes import alive, forget_stack, read_pid, read_stack, start, state_dir, stop, write_stack
from flows.server_log import server_logging

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
WORK_POOL = "local-process"
PROCESSES = ("worker", "files", "server")  # stop order: the worker first, so no run is left orphaned
IN_FLIGHT = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
DEPLOYMENTS = ("build-features/demo", "train-eval/demo", "demo/demo", "tune/demo")  # prefect.yaml's, as `up` lists them


def api_url(port: int) -> str:
    """The API address of a local server on ``port``."""
    return f"http://{HOST}:{port}/api"


def stack_env(port: int, files_port: int | None = None, out: Path | None = None) -> dict[str, str]:
    """The environment for the server, the CLI calls and the worker: project home, local API, file server."""
    env = {**os.environ, "PREFECT_HOME": os.environ["PREFECT_HOME"], "PREFECT_API_URL": api_url(port),
           # the worker kills the process of a run set Cancelling (off by default in Prefect 3.9), and
           # looks for cancellations and new runs every 2 s rather than every 120 s and 10 s
           "PREFECT_WORKER_ENABLE_CANCELLATION": "true", "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "2",
           "PREFECT_WORKER_QUERY_SECONDS": "2"}
    if files_port is not None and out is not None:
        env |= {OUTPUTS_ENV: str(out), FILES_ROOT_ENV: str(out), FILES_URL_ENV: f"http://{HOST}:{files_port}/"}
    return env


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def wait_healthy(port: int, timeout_s: float = 120.0, pid: int | None = None) -> None:
    """Poll the server's health endpoint until it answers; raise naming the log if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            break
        try:
            with urllib.request.urlopen(f"{api_url(port)}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Prefect server on {HOST}:{port} did not come up; see {state_dir() / 'server.log'}")


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _port_free(port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex((HOST, port)) == 0:
            raise RuntimeError(f"{HOST}:{port} is already in use; pick another with --port / --files-port")


def up(port: int = DEFAULT_PORT, files_port: int | None = None, out: Path | None = None) -> None:
    """Start the server, create the work pool, apply ``prefect.yaml``'s deployments, start the file server
    over the output root ``out`` on ``files_port`` (default ``port + 1``) and a worker."""
    files_port = port + 1 if files_port is None else files_port
    out = output_root(out)
    env = stack_env(port, files_port, out)
    if read_pid("server") is not None:
        raise RuntimeError(f"a server started by flows.local is already running (pid file in {state_dir()}); "
                           "run `python -m flows.local down` first")
    _port_free(port)
    _port_free(files_port)
    out.mkdir(parents=True, exist_ok=True)
    pid = start("server", _prefect("server", "start", "--host", HOST, "--port", str(port)), env | server_logging(env))
    print(f"server: pid {pid}, log {state_dir() / 'server.log'}")
    write_stack(api=api_url(port), files=env[FILES_URL_ENV], root=out)
    pid = start("files", [sys.executable, "-m", "flows.files", "--root", str(out), "--port", str(files_port)], env)
    print(f"files: pid {pid}, {out} read-only at {env[FILES_URL_ENV]}")
    wait_healthy(port, pid=read_pid("server"))
    _run(_prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"), env)
    _run(_prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PROJECT_ROOT / "prefect.yaml")), env)
    pid = start("worker", _prefect("worker", "start", "--pool", WORK_POOL), env)
    print(f"worker: pid {pid}, log {state_dir() / 'worker.log'}")
    prefect = Path(sys.executable).parent / "prefect"
    print(f"\nUI: http://{HOST}:{port}   outputs: {env[FILES_URL_ENV]} (the links of every run in this Prefect "
          f"home point there while it runs, command-line runs included)\n\nIn your shell:\n"
          f"  export PREFECT_HOME={env['PREFECT_HOME']} PREFECT_API_URL={env['PREFECT_API_URL']}\n"
          + "".join(f"  {prefect} deployment run {name}\n" for name in DEPLOYMENTS))


def cancel_in_flight(api: str, timeout_s: float = 10.0) -> list[str]:
    """Ask the worker to cancel every flow run not yet final; force Cancelled where it did not. Returns their names.

    A running deployment run is moved to Cancelling, on which the worker stops its process; one whose
    state is still not final after ``timeout_s`` is set Cancelled outright. Any other run (a command
    line's, or one not started yet) is set Cancelled at once: no worker acts on it.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelled, Cancelling

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        in_flight = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType[name] for name in IN_FLIGHT])))
        runs = client.read_flow_runs(flow_run_filter=in_flight)
        for run in runs:
            by_worker = run.deployment_id is not None and run.state is not None and run.state.is_running()
            client.set_flow_run_state(run.id, Cancelling() if by_worker else Cancelled(), force=True)
        deadline = time.monotonic() + timeout_s
        while client.read_flow_runs(flow_run_filter=in_flight) and time.monotonic() < deadline:
            time.sleep(0.5)
        for run in client.read_flow_runs(flow_run_filter=in_flight):
            client.set_flow_run_state(run.id, Cancelled(message="stopped by `flows.local down`"), force=True)
    return [run.name for run in runs]


def down(timeout_s: float = 20.0) -> None:
    """Cancel in-flight flow runs, then stop the worker, the file server and the server (SIGTERM, then
    SIGKILL after ``timeout_s``)."""
    stack = read_stack()
    if read_pid("server") is not None and stack is not None:
        import httpx

        api = stack["api"]
        try:
            cancelled = cancel_in_flight(api)
            print(f"cancelled {len(cancelled)} flow run(s) in flight{': ' + ', '.join(cancelled) if cancelled else ''}")
        except (httpx.HTTPError, OSError) as exc:  # the processes are stopped all the same
            print(f"warning: could not reach the server at {api} to cancel runs in flight ({exc}); "
                  "stopping the processes anyway", file=sys.stderr)
    for name in PROCESSES:
        stop(name, timeout_s)
    forget_stack()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.local", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port on 127.0.0.1")
    parser.add_argument("--files-port", type=int, help="port of the output file server (default: --port + 1)")
    parser.add_argument("--out", type=Path, help="output root to serve (default: $HSCMAE_OUTPUTS, else ./outputs)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("prefect") is None:
        parser.exit(2, f"error: {sys.executable}: this Python has no Prefect; use the project's .venv/bin/python\n")
    if args.command == "up":
        up(args.port, args.files_port, args.out)
    else:
        down()


if __name__ == "__main__":
    main()
