"""Progress a person can watch: a Prefect progress artifact in the UI and one log line per step.

The artifact's description carries the counts in words ("3 of 8 method x seed done ..."); the same
words go to the run's log as a plain line (``train-eval-progress: 3/8 runs (38 %) - 3 of 8 ...``),
which reads the same in a terminal, a worker's log, a pipe and the UI. There is no terminal bar:
a flow-level tqdm bar held the terminal's first bar row, so the library's own bars (demo clips,
extraction) were drawn below it with cursor moves and left blank lines behind when they closed.
"""

from __future__ import annotations

from uuid import UUID


class Progress:
    """One long stage's progress: ``update(done, text)`` moves the artifact ``key`` and logs a line.

    A context manager, for the ``with`` blocks of the flows (leaving it changes nothing: the
    artifact keeps its last value).

    Args:
        total: units of work in the stage (shards, method x seed runs).
        key: the progress artifact's key (latest version wins in the UI); also starts each log line.
        text: what the artifact says before anything is done.
        unit: one unit's name in the log lines ("shard": "3/8 shards").
    """

    def __init__(self, total: int, *, key: str, text: str, unit: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.key, self.unit = max(1, total), key, unit
        self.artifact: UUID = create_progress_artifact(0.0, key=key, description=text)
        self._log(text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def restart(self, total: int, text: str) -> None:
        """Count ``total`` units from 0 again (the stage now knows how much work it has)."""
        self.total = max(1, total)
        self.update(0, text)

    def update(self, done: int, text: str) -> None:
        """``done`` of ``total`` finished; ``text`` says so in words (shown in the UI and logged)."""
        from prefect.artifacts import update_progress_artifact

        percent = 100.0 * done / self.total
        update_progress_artifact(self.artifact, percent, description=text)
        self._log(f"{done}/{self.total} {self.unit}s ({percent:.0f} %) - {text}")

    def _log(self, line: str) -> None:
        from prefect import get_run_logger

        get_run_logger().info(f"{self.key}: {line}")
