"""Prefect flows for every stage: ``build-features``, ``train-eval`` and the demo path.

Importing this package points Prefect at a project-local home (``<repo>/.prefect``: its
SQLite database, result storage and logs) unless the user has set ``PREFECT_HOME``
themselves, so nothing leaks into ``~/.prefect``. It also turns off the server's usage
telemetry and the client's (``DO_NOT_TRACK``: no device id under ``.sdk_telemetry/``), hides
Dask's INFO messages (``--verbose`` shows them), and gives the embedded server (used when no
``PREFECT_API_URL`` is set) two minutes to start, as a first start creates the database and
can take longer than Prefect's default 20 s on a busy two-core machine. All of this is a
default the user's environment overrides, and must happen before Prefect is first imported.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_ROOT if (PACKAGE_ROOT / "pyproject.toml").is_file() else Path.cwd()

os.environ.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")  # the client's telemetry (no .prefect/.sdk_telemetry/ device id)
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # no Dask INFO chatter; --verbose lowers it
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
