"""Serve one folder read-only over http on 127.0.0.1, so the Prefect UI's links to plots open.

    python -m flows.files --root outputs --port 4201

Browsers refuse ``file://`` links from an http page; ``python -m flows.local up`` starts this
server over the output root, and artifacts link here (``flows.common.file_url``). Only GET and
HEAD exist; a path that resolves outside the root (``..``, a symbolic link) is answered 404.

Text outputs (``log.jsonl``, ``results.csv``, ``summary.md``, ``tuned.yaml``, logs) are sent as
``text/plain; charset=utf-8``, so the browser shows them rather than downloading them. A browser that
drops a request half-way (an audio element often does) is not an error worth a traceback: the
server lets the connection go quietly.
"""

from __future__ import annotations

import argparse
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"
TEXT = "text/plain; charset=utf-8"
TEXT_SUFFIXES = (".jsonl", ".csv", ".md", ".yaml", ".yml", ".log", ".txt")  # shown in the browser, not downloaded


class ReadOnlyHandler(SimpleHTTPRequestHandler):
    """Static files under ``directory``; nothing outside it, no directory escape through links."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **dict.fromkeys(TEXT_SUFFIXES, TEXT)}

    def send_head(self):  # noqa: ANN201  (the base class's signature)
        """404 for any path that resolves outside the root; otherwise the base class's answer."""
        translated = Path(self.translate_path(self.path)).resolve()
        if not translated.is_relative_to(Path(self.directory).resolve()):
            self.send_error(404, "File not found")
            return None
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
        pass  # quiet: the UI's clicks are not news


class QuietServer(ThreadingHTTPServer):
    """A threading http server that says nothing when a client hangs up mid-answer."""

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A closed or reset connection (``BrokenPipeError``, ``ConnectionResetError``) is the client's
        choice: no traceback. Anything else: the base class's traceback on stderr."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve(root: Path, port: int) -> QuietServer:
    """A server for ``root`` on 127.0.0.1:``port`` (0: a free port); call ``serve_forever`` on it."""
    handler = functools.partial(ReadOnlyHandler, directory=str(Path(root).resolve()))
    return QuietServer((HOST, port), handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m flows.files", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the folder to serve")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root}: not a folder")
    serve(args.root, args.port).serve_forever()


if __name__ == "__main__":
    main()
