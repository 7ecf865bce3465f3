"""Where a flow's tasks run: Prefect's thread pool, or a Dask cluster (local or at an address)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

DASK_LOGGING_ENV = "DASK_LOGGING__DISTRIBUTED"  # Dask's log level (flows/__init__ sets "warning")


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
