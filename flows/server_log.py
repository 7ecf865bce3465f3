"""The local stack's server log without SQLite's retried lock errors.

Prefect already runs its database in WAL mode with a 60 s busy timeout. The
"database is locked" tracebacks seen in ``server.log`` while runs write come from a few Prefect
transactions that read and then write without taking the write lock first (the worker channel's
heartbeat, the worker-health monitor): SQLite refuses that upgrade at once, whatever the timeout,
and the next heartbeat or monitor pass does the work. ``up`` gives the server a logging config
(Prefect's own plus :class:`RetriedLockFilter`) that leaves those retried errors out of its log, as
Prefect does for its API requests; ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true`` shows them again.
See docs/local-stack.md.
"""

from __future__ import annotations

import logging
import sqlite3

from flows.processes import state_dir


class RetriedLockFilter(logging.Filter):
    """Leaves out records of SQLite's "database is locked" (``SQLITE_BUSY``), an operation the server retries."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        cause = getattr(error, "orig", error)  # SQLAlchemy's OperationalError wraps the driver's
        return not (isinstance(cause, sqlite3.OperationalError) and "database is locked" in str(cause))


def server_logging(env: dict[str, str]) -> dict[str, str]:
    """The server's logging settings: Prefect's default config with :class:`RetriedLockFilter` on its console,
    written to ``server-logging.yml``; nothing when ``env`` names a config or asks for retryable errors."""
    import yaml
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH
    from prefect.settings import get_current_settings

    if "PREFECT_LOGGING_SETTINGS_PATH" in env or get_current_settings().server.log_retryable_errors:
        return {}
    config = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    config.setdefault("filters", {})["retried_sqlite_locks"] = {"()": "flows.server_log.RetriedLockFilter"}
    config["handlers"]["console"].setdefault("filters", []).append("retried_sqlite_locks")
    path = state_dir() / "server-logging.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return {"PREFECT_LOGGING_SETTINGS_PATH": str(path)}
