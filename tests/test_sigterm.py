"""SIGTERM to a flow's command line that runs without a server: its temporary Prefect server is its child."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import PROJECT_ROOT
from prefect_stack import running


@pytest.mark.slow
def test_sigterm_stops_a_run_within_seconds_and_the_same_command_resumes(tmp_path: Path) -> None:
    """SIGTERM (Ctrl-C likewise) stopped the demo 366 s later, once the running task had ended, and left
    Prefect's temporary server running. Now the command exits within seconds, its run and unfinished task are
    Crashed, no child process is left, and the same command resumes training from the last checkpoint."""
    psutil = pytest.importorskip("psutil")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}  # a Prefect home of its own, no server
    env.pop("PREFECT_API_URL", None)
    config = tmp_path / "small.yaml"  # a small generated set and budget: the stop and the resume are what count
    config.write_text("synthetic: {clips: 400}\nepochs: 12\npatience: 12\n")
    command = [sys.executable, "-m", "flows.train_eval", "--config", str(config), "--seeds", "0", "--methods", "hscmae",
               "--out", str(tmp_path / "out")]
    log = tmp_path / "first.log"
    with open(log, "w") as sink:
        run = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "hscmae seed 0: epoch 4/12" not in log.read_text():  # training, with epochs checkpointed
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    children = psutil.Process(run.pid).children(recursive=True)  # the temporary Prefect server, at least
    run.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 15 and children and not [c.pid for c in children if running(c.pid)]
    said = log.read_text()
    assert "stopping on SIGTERM: the work finished so far is kept; run the same command again to resume" in said
    assert "Traceback" not in said
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        assert db.execute("SELECT name, state_type FROM flow_run").fetchall()[0][1] == "CRASHED"
        tasks = dict(db.execute("SELECT name, state_type FROM task_run").fetchall())
    assert tasks["hscmae-seed0"] == "CRASHED"
    resumed = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    said = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "hscmae seed 0: epoch 12/12" in said, said[-3000:]
    assert "hscmae seed 0: epoch 2/12" not in said  # resumed from epoch 4 or later, not trained again from 1
