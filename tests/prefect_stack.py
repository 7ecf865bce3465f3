"""A local Prefect stack for the tests that run flows against one, and what they read back from its server.

The ``stack`` fixture (tests/conftest.py) starts one per test module with :func:`local_stack`:
``python -m flows.local up`` in a temporary Prefect home, as a user starts it.
"""

from __future__ import annotations

import flows  # noqa: F401  (first: it points Prefect at the project-local home before Prefect is imported)

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import PROJECT_ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(") ", 1)[-1][:1] != "Z"


def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start a stack (server, file server, worker, the deployments of prefect.yaml) in a temporary Prefect home,
    yield the environment that reaches it (this process's Prefect client points at it meanwhile), then stop it
    and check that no process of it is left."""
    home, port, files_port = tmp_path_factory.mktemp("prefect-home"), free_port(), free_port()
    outputs = tmp_path_factory.mktemp("outputs")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "HSCMAE_OUTPUTS": str(outputs), "FILES_PORT": str(files_port)}
    local = [sys.executable, "-m", "flows.local"]
    started = subprocess.run([*local, "up", "--port", str(port), "--files-port", str(files_port)], env=env,
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
    pids = [int(p.read_text()) for p in sorted((home / "local").glob("*.pid"))]
    try:
        assert started.returncode == 0 and len(pids) == 3, started.stdout + started.stderr  # server, files, worker
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            yield env
    finally:
        subprocess.run([*local, "down"], env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=120)
    alive = [pid for pid in pids if running(pid)]
    assert not alive, f"`flows.local down` left processes running: {alive}"


def task_states(flow_run_id: UUID, total: int) -> dict[str, Counter]:
    """Final state names of the flow run's ``total`` task runs, by task: ``{"extract-shard": Counter(...)}``.

    Task run states reach the server asynchronously, so this waits (up to a minute) until all are final.
    """
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if (len(runs) == total and all(r.state is not None and r.state.is_final() for r in runs)) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    states: dict[str, Counter] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], Counter())[run.state.name if run.state else None] += 1
    return states


def artifacts(flow_run_id: UUID) -> dict[str, object]:
    """The flow run's artifacts, by key."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def latest(flow_run_id: UUID, key: str) -> object:
    """The latest version of the flow run's artifact ``key``."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                      artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created)


def wait_final(flow_run_id: UUID, timeout_s: float = 300) -> State:
    """The flow run's state once final (polling the server)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if (state is not None and state.is_final()) or time.monotonic() > deadline:
                return state
            time.sleep(1)
