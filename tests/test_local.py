"""The local stack's parts that need no Prefect server: the file server (flows.files), how links find it
(flows.processes, flows.common.file_url), and the server's log config (flows.local).

The file server runs in a thread, or as the process ``flows.local up`` would start.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.common import file_url
from flows.files import serve
from flows.server_log import RetriedLockFilter, server_logging
from flows.processes import read_pid, served_files, start, state_dir, stop, write_stack
from prefect_stack import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A file server over ``tmp_path/out`` in a thread: (the folder, its base URL)."""
    out = tmp_path / "out"
    (out / "runs" / "run-1" / "plots").mkdir(parents=True)
    server = serve(out, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def test_text_outputs_are_shown_as_utf8_text_and_others_keep_their_type(served: tuple[Path, str]) -> None:
    out, base = served
    run = out / "runs" / "run-1"
    files = {"log.jsonl": '{"epoch": 1, "loss": 0.5, "note": "µ"}\n', "results.csv": "method,mAP\nclip,0.41\n",
             "results.md": "| method | mAP |\n", "tuned.yaml": "epochs: 3\n", "server.log": "started\n"}
    for name, text in files.items():
        (run / name).write_text(text, encoding="utf-8")
        kind, body = _get(f"{base}runs/run-1/{name}")
        assert kind == "text/plain; charset=utf-8" and body.decode("utf-8") == text, name
    (run / "plots" / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    assert _get(f"{base}runs/run-1/plots/loss.png") == ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(16))
    (run / "metrics.json").write_text("{}")
    assert _get(f"{base}runs/run-1/metrics.json")[0] == "application/json"
    with pytest.raises(urllib.error.HTTPError, match="404"):  # nothing outside the root
        _get(base + "..%2f..%2fetc/passwd")


def _handlers_running() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_a_client_that_hangs_up_mid_file_leaves_no_traceback(served: tuple[Path, str],
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    out, base = served
    (out / "clip.wav").write_bytes(bytes(32 * 1024 * 1024))  # far more than the socket buffers hold
    port = int(base.rsplit(":", 1)[1].strip("/"))
    for _ in range(3):  # as an audio element does: ask, read a little, drop the connection (reset)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /clip.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.0 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 30
    while _handlers_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _handlers_running()
    assert _get(base + "clip.wav")[0] == "audio/x-wav"  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_other_errors_still_print_their_traceback(served: tuple[Path, str],
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    server = serve(served[0], 0)
    try:
        try:
            raise ValueError("a bug in a handler")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            server.handle_error(None, ("127.0.0.1", 2))
    finally:
        server.server_close()
    err = capfd.readouterr().err
    assert "ValueError: a bug in a handler" in err and "BrokenPipeError" not in err


def test_command_line_links_use_the_file_server_only_while_it_runs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HSCMAE_FILES_URL", raising=False)
    monkeypatch.delenv("HSCMAE_FILES_ROOT", raising=False)
    out, port = tmp_path / "out", free_port()
    plot = out / "runs" / "run 1" / "loss.png"
    plot.parent.mkdir(parents=True)
    plot.write_bytes(b"png")
    assert served_files() is None and file_url(plot) == plot.as_uri()  # no stack: a file link

    base = f"http://127.0.0.1:{port}/"
    write_stack(api="http://127.0.0.1:1/api", files=base, root=out)
    assert served_files() is None and file_url(plot) == plot.as_uri()  # recorded, but no file server runs
    start("files", [sys.executable, "-m", "flows.files", "--root", str(out), "--port", str(port)],
          {"PATH": "", "PYTHONPATH": str(ROOT)})
    try:
        assert read_pid("files") is not None and served_files() == (base, out)
        assert file_url(plot) == base + "runs/run%201/loss.png"
        assert file_url(tmp_path / "elsewhere.png") == (tmp_path / "elsewhere.png").as_uri()
        deadline = time.monotonic() + 30
        while True:  # the link opens: the server answers with the file's bytes
            try:
                assert _get(file_url(plot))[1] == b"png"
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, (state_dir() / "files.log").read_text()
                time.sleep(0.2)
    finally:
        stop("files", 10)
    assert served_files() is None and file_url(plot) == plot.as_uri()


def _lock_error(message: str) -> Exception:
    """The error SQLAlchemy raises for a driver error, as Prefect's server sees it."""
    from sqlalchemy.exc import OperationalError

    return OperationalError("INSERT INTO worker ...", {}, sqlite3.OperationalError(message))


def test_server_log_leaves_out_only_the_retried_sqlite_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_LOGGING_SETTINGS_PATH", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_LOG_RETRYABLE_ERRORS", raising=False)
    env = server_logging({})
    config = Path(env["PREFECT_LOGGING_SETTINGS_PATH"])
    assert config.parent == state_dir()
    # the server process: Prefect's logging set up from that file, then a retried lock error and another error
    script = (
        "import logging, sqlite3\n"
        "from prefect.logging.configuration import setup_logging\n"
        "from sqlalchemy.exc import OperationalError\n"
        "setup_logging()\n"
        "log = logging.getLogger('prefect.server.utilities.worker_channel')\n"
        "for message in ('database is locked', 'no such table: worker'):\n"
        "    try:\n"
        "        raise OperationalError('INSERT INTO worker', {}, sqlite3.OperationalError(message))\n"
        "    except OperationalError:\n"
        "        log.exception('Worker channel heartbeat persistence failed: %s', message)\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "persistence failed: no such table" in done.stderr and "no such table: worker" in done.stderr
    assert "database is locked" not in done.stderr

    records = [logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, (type(e), e, None))
               for e in (_lock_error("database is locked"), _lock_error("disk I/O error"),
                         sqlite3.OperationalError("database is locked"))]
    assert [RetriedLockFilter().filter(r) for r in records] == [False, True, False]
    assert RetriedLockFilter().filter(logging.LogRecord("x", logging.INFO, __file__, 1, "fine", None, None))
    # a config of the user's own, or asking for retryable errors, is left alone
    assert server_logging({"PREFECT_LOGGING_SETTINGS_PATH": "mine.yml"}) == {}
    from prefect.settings import PREFECT_SERVER_LOG_RETRYABLE_ERRORS, temporary_settings

    with temporary_settings(updates={PREFECT_SERVER_LOG_RETRYABLE_ERRORS: True}):
        assert server_logging({}) == {}
