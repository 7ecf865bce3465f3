"""`python -m extractors.weights fetch`: download into the hub cache and check sha256, against 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from extractors import vggish_params as vp
from extractors.registry import WeightsSpec
from extractors.weights import WeightsNotFoundError, fetch, resolve_weights
from pipeline.vocab import RANDOM_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_fetch_checks_the_published_sha256_prefix(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = served
    content = b"tiny weights " * 100
    good = f"tiny-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    (folder / good).write_bytes(content)
    (folder / "bad-00000000.pth").write_bytes(content)
    hub = tmp_path / "hub" / "checkpoints"
    got = fetch(WeightsSpec(good, url="https://example.invalid/x/" + good), base_url=base, hub_dir=hub)
    assert got == hub / good and got.read_bytes() == content
    with pytest.raises(ValueError, match="does not start with the published 00000000"):
        fetch(WeightsSpec("bad-00000000.pth", url="https://example.invalid/bad-00000000.pth"), base_url=base,
              hub_dir=hub)
    assert sorted(p.name for p in hub.iterdir()) == [good]  # the refused file left nothing behind


def test_cli_fetches_into_the_hub_cache_and_refuses_a_wrong_file(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, base = served
    (folder / vp.VGGISH_WEIGHTS_FILE).write_bytes(b"not the published file")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-m", "extractors.weights", "fetch", "vggish", "--base-url", base],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {vp.VGGISH_WEIGHTS_FILE}: sha256 "), done.stderr
    assert not list((tmp_path / "torch").rglob("*.pth"))


def test_missing_weights_message_is_one_line_with_the_fetch_command(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as missing:
        resolve_weights(WeightsSpec(vp.VGGISH_WEIGHTS_FILE, vp.VGGISH_WEIGHTS_URL), None)
    message = str(missing.value)
    assert "\n" not in message and vp.VGGISH_WEIGHTS_FILE in message and str(tmp_path / "checkpoints") in message
    assert "`python -m extractors.weights fetch vggish`" in message and f"--weights {RANDOM_WEIGHTS}" in message
