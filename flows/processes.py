"""The processes of the local Prefect stack (``flows.local``): started from argument lists, each in its
own session, with its pid file and log under ``$PREFECT_HOME/local``; found again and stopped by pid.

A pid file whose process is gone, or now runs something else (a reused pid), counts as stopped.
``stack.json`` beside them records the addresses ``up`` serves: ``down`` reads the API address, and
:func:`served_files` tells any process of this Prefect home (a command line's flow run too) where the
file server is while it runs, so its links open over http (``flows.common.file_url``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from flows import PROJECT_ROOT

CHILD_GRACE_S = 3.0  # a child process's time to end on SIGTERM before it is killed
STACK_FILE = "stack.json"


def state_dir() -> Path:
    """``$PREFECT_HOME/local``: pid files and logs of the processes ``up`` starts."""
    return Path(os.environ["PREFECT_HOME"]) / "local"


def write_stack(*, api: str, files: str, root: Path) -> None:
    """Record the stack's API address, the file server's base URL and the folder it serves."""
    state_dir().mkdir(parents=True, exist_ok=True)
    (state_dir() / STACK_FILE).write_text(json.dumps({"api": api, "files": files, "root": str(root)}))


def read_stack() -> dict[str, str] | None:
    """What :func:`write_stack` recorded (``api``, ``files``, ``root``), or ``None`` when nothing is."""
    path = state_dir() / STACK_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def forget_stack() -> None:
    """Remove the record (``down``, once everything is stopped)."""
    (state_dir() / STACK_FILE).unlink(missing_ok=True)


def served_files() -> tuple[str, Path] | None:
    """The file server's base URL and the folder it serves, while the file server ``up`` started runs."""
    stack = read_stack()
    if stack is None or "root" not in stack or read_pid("files") is None:
        return None
    return stack["files"], Path(stack["root"])


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one owned by another user counts; a zombie, exited but not yet
    reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1]
    except FileNotFoundError:  # gone meanwhile; or no procfs, where kill's answer is all there is
        return not Path("/proc/self").exists()
    return state != "Z"


def _ours(pid: int) -> bool:
    """Whether ``pid`` still runs a Prefect command (not a process that reused a stale pid)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():  # no procfs: trust the pid file
        return alive(pid)
    try:
        command = cmdline.read_bytes()
    except OSError:
        return False
    if not command:  # a live process reads empty while it is exec'ing its command (just started)
        return alive(pid)
    return b"prefect" in command or b"flows.files" in command


def read_pid(name: str) -> int | None:
    """The pid recorded for ``name`` if that process still runs; a stale pid file is removed."""
    path = state_dir() / f"{name}.pid"
    if not path.is_file():
        return None
    pid = int(path.read_text().strip())
    if alive(pid) and _ours(pid):
        return pid
    path.unlink()
    return None


def start(name: str, command: list[str], env: dict[str, str]) -> int:
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


def stop(name: str, timeout_s: float) -> None:
    """Stop ``name``'s session: SIGTERM, then SIGKILL after ``timeout_s``; its pid file goes. Says what it did."""
    pid = read_pid(name)
    if pid is None:
        print(f"{name}: not running")
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
    (state_dir() / f"{name}.pid").unlink(missing_ok=True)
    print(f"{name}: stopped (pid {pid})")


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
