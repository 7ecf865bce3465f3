"""Start and stop a local Prefect stack: server (127.0.0.1), process work pool, deployments, worker.

    python -m flows.local up      # server + pool + deployments (prefect.yaml) + worker
    python -m flows.local down    # stop what ``up`` started

Everything lives in the project-local Prefect home (``.prefect/``): the SQLite database,
and under ``.prefect/local/`` the pid files and logs of the server and the worker. Every
process is started from an argument list in its own session, so ``down`` stops each one
together with the flow runs it spawned, and nothing else.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from flows import PROJECT_ROOT

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
WORK_POOL = "local-process"
PROCESSES = ("worker", "server")  # stop order: the worker first, so no run is left orphaned


def state_dir() -> Path:
    """``$PREFECT_HOME/local``: pid files and logs of the processes ``up`` starts."""
    return Path(os.environ["PREFECT_HOME"]) / "local"


def api_url(port: int) -> str:
    """The API address of a local server on ``port``."""
    return f"http://{HOST}:{port}/api"


def stack_env(port: int) -> dict[str, str]:
    """The environment for the server, the CLI calls and the worker: project home, local API."""
    return {**os.environ, "PREFECT_HOME": os.environ["PREFECT_HOME"], "PREFECT_API_URL": api_url(port)}


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(pid: int) -> bool:
    """Whether ``pid`` still runs a Prefect command (not a process that reused a stale pid)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():  # no procfs: trust the pid file
        return _alive(pid)
    try:
        return b"prefect" in cmdline.read_bytes()
    except OSError:
        return False


def _read_pid(name: str) -> int | None:
    """The pid recorded for ``name`` if that process still runs; a stale pid file is removed."""
    path = state_dir() / f"{name}.pid"
    if not path.is_file():
        return None
    pid = int(path.read_text().strip())
    if _alive(pid) and _ours(pid):
        return pid
    path.unlink()
    return None


def _start(name: str, command: list[str], env: dict[str, str]) -> int:
    """Start ``command`` in its own session with its output in ``<name>.log``; record its pid."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    (folder / f"{name}.pid").write_text(f"{process.pid}\n")
    return process.pid


def wait_healthy(port: int, timeout_s: float = 120.0, pid: int | None = None) -> None:
    """Poll the server's health endpoint until it answers; raise naming the log if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
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


def up(port: int = DEFAULT_PORT) -> None:
    """Start the server, create the work pool, apply ``prefect.yaml``'s deployments, start a worker."""
    env = stack_env(port)
    if _read_pid("server") is not None:
        raise RuntimeError(f"a server started by flows.local is already running (pid file in {state_dir()}); "
                           "run `python -m flows.local down` first")
    with socket.socket() as probe:
        if probe.connect_ex((HOST, port)) == 0:
            raise RuntimeError(f"{HOST}:{port} is already in use; pick another with --port")
    pid = _start("server", _prefect("server", "start", "--host", HOST, "--port", str(port)), env)
    print(f"server: pid {pid}, log {state_dir() / 'server.log'}")
    wait_healthy(port, pid=pid)
    _run(_prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"), env)
    _run(_prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PROJECT_ROOT / "prefect.yaml")), env)
    pid = _start("worker", _prefect("worker", "start", "--pool", WORK_POOL), env)
    print(f"worker: pid {pid}, log {state_dir() / 'worker.log'}")
    print(f"\nUI: http://{HOST}:{port}\n\nIn your shell:\n"
          f"  export PREFECT_HOME={env['PREFECT_HOME']} PREFECT_API_URL={env['PREFECT_API_URL']}\n"
          "  prefect deployment run build-features/demo\n"
          "  prefect deployment run train-eval/demo\n")


def down(timeout_s: float = 20.0) -> None:
    """Stop the worker (and its flow runs), then the server: SIGTERM, then SIGKILL after ``timeout_s``."""
    for name in PROCESSES:
        pid = _read_pid(name)
        if pid is None:
            print(f"{name}: not running")
            continue
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        (state_dir() / f"{name}.pid").unlink(missing_ok=True)
        print(f"{name}: stopped (pid {pid})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.local", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port on 127.0.0.1")
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.port)
    else:
        down()


if __name__ == "__main__":
    main()
