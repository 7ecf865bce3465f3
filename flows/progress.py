"""Progress a person can watch: a Prefect progress artifact in the UI and a tqdm bar in a terminal.

The bar is drawn only when stderr is a terminal (a worker's log or a pipe gets none); the
artifact's description carries the counts in words ("3 of 8 method x seed done ...").
"""

from __future__ import annotations

from uuid import UUID

from tqdm import tqdm


class Progress:
    """One long stage's progress: ``update(done, text)`` moves the artifact ``key`` and the bar.

    A context manager: leaving it removes the terminal bar.

    Args:
        total: units of work in the stage (shards, method x seed runs).
        key: the progress artifact's key (latest version wins in the UI).
        text: what the artifact says before anything is done.
        unit: the bar's unit name.
    """

    def __init__(self, total: int, *, key: str, text: str, unit: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total = max(1, total)
        self.artifact: UUID = create_progress_artifact(0.0, key=key, description=text)
        self.bar = tqdm(total=total, desc=key, unit=unit, disable=None, leave=False)  # None: off unless a terminal

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def restart(self, total: int, text: str) -> None:
        """Count ``total`` units from 0 again (the stage now knows how much work it has)."""
        self.total = max(1, total)
        self.bar.reset(total=total)
        self.update(0, text)

    def update(self, done: int, text: str) -> None:
        """``done`` of ``total`` finished; ``text`` says so in words (shown in the UI and beside the bar)."""
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact, 100.0 * done / self.total, description=text)
        self.bar.n = done
        self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        """Remove the terminal bar (the artifact stays)."""
        self.bar.close()
