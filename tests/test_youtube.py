"""YouTube acquisition: yt-dlp against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import http.server
import math
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline.media import youtube
from pipeline.media.acquire import AcquireConfig, acquire
from pipeline.media.youtube import YouTubeConfig, classify_error, download_all, download_clip

# Messages as yt-dlp prints them (YouTube's wording), and what each outcome must be.
MESSAGES = [
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable", "unavailable"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is unavailable", "unavailable"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm your age. This video may be inappropriate for some users.", "unavailable"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Private video. Sign in if you've been granted access to this video", "private"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is private", "private"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video has been removed by the uploader", "removed"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is no longer available because the YouTube "
     "account associated with this video has been terminated.", "removed"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video has been removed for violating YouTube's "
     "Terms of Service", "removed"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. The uploader has not made this video available in your "
     "country", "region_blocked"),
    ("ERROR: [youtube] dQw4w9WgXcQ: The uploader has not made this video available in your country\nYou might "
     "want to use a VPN or a proxy server (with --proxy) to workaround.", "region_blocked"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video contains content from SME, who has blocked it "
     "in your country on copyright grounds", "region_blocked"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download API page: <urlopen error [Errno -3] Temporary failure in "
     "name resolution> (caused by URLError(gaierror(-3, 'Temporary failure in name resolution')))", "network_error"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download webpage: HTTP Error 429: Too Many Requests (caused by "
     "<HTTPError 429: Too Many Requests>)", "network_error"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you're not a bot. Use --cookies-from-browser or --cookies "
     "for the authentication.", "network_error"),
    ("ERROR: [download] Got error: The read operation timed out", "network_error"),
    # captured from this yt-dlp against a local server
    ("ERROR: [generic] nothere: Unable to download webpage: HTTP Error 404: File not found (caused by "
     "<HTTPError 404: File not found>)", "unavailable"),
    ("ERROR: [generic] x: Unable to download webpage: HTTPConnection(host='127.0.0.1', port=1): Failed to "
     "establish a new connection: [Errno 111] Connection refused (caused by TransportError(...))", "network_error"),
    ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "error"),
]


@pytest.mark.parametrize(("message", "outcome"), MESSAGES)
def test_classify_error(message: str, outcome: str) -> None:
    assert classify_error(message) == outcome


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; answers 503 to the first ``failures[path]`` requests of a path; logs requests."""

    failures: dict[str, int] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        if self.failures.get(self.path, 0) > 0:
            self.failures[self.path] -= 1
            self.send_error(503, "Service Unavailable")
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path, demo_dir: Path, demo_labels: pd.DataFrame) -> Iterator[tuple[str, type[_Handler], Path]]:
    """A 127.0.0.1 server with ``v1.mp4`` and ``v2.mp4``; yields (url template, handler class, served folder)."""
    served = tmp_path / "served"
    served.mkdir()
    for name, rel in zip(("v1", "v2", "v3"), demo_labels["path"]):
        shutil.copy(demo_dir / rel, served / f"{name}.mp4")
    handler = type("Handler", (_Handler,), {"failures": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{{id}}.mp4", handler, served
    httpd.shutdown()
    httpd.server_close()


def _config(template: str, **changes: object) -> YouTubeConfig:
    return YouTubeConfig(url_template=template, backoff_s=0.5, sleep_between_s=0.0, **changes)


def test_download_one_clip(tmp_path: Path, server: tuple[str, type[_Handler], Path]) -> None:
    template, _, served = server
    row = download_clip("clip1", "v1", 1.0, 3.0, tmp_path / "out", _config(template))
    assert row["outcome"] == "downloaded" and row["attempts"] == 1
    assert Path(row["path"]) == tmp_path / "out" / "clip1.mp4"
    assert Path(row["path"]).read_bytes() == (served / "v1.mp4").read_bytes()
    assert row["local_start_s"] == 0.0  # no ffmpeg here to cut ranges: the whole file, cut later


def test_transient_errors_are_retried_with_backoff(tmp_path: Path, server: tuple[str, type[_Handler], Path]) -> None:
    template, handler, _ = server
    handler.failures["/v2.mp4"] = 1
    waits: list[float] = []
    row = download_clip("c", "v2", 0.0, 5.0, tmp_path, _config(template), sleep=waits.append)
    assert (row["outcome"], row["attempts"], waits) == ("downloaded", 2, [0.5])
    handler.failures["/v2.mp4"] = 10
    waits.clear()
    row = download_clip("d", "v2", 0.0, 5.0, tmp_path, _config(template), sleep=waits.append)
    assert (row["outcome"], row["attempts"], waits) == ("network_error", 3, [0.5, 1.0])
    assert "503" in row["message"]
    waits.clear()
    row = download_clip("e", "absent", 0.0, 5.0, tmp_path, _config(template), sleep=waits.append)
    assert (row["outcome"], row["attempts"], waits) == ("unavailable", 1, [])  # permanent: no retry


def test_rerun_skips_complete_and_retries_only_transient(tmp_path: Path, server: tuple[str, type[_Handler], Path]) -> None:
    template, handler, _ = server
    manifest = pd.DataFrame({"clip_id": ["ok", "gone", "flaky"], "source_kind": "youtube",
                             "source": ["v1", "absent", "v3"], "clip_start_s": 0.0, "clip_end_s": math.nan})
    handler.failures["/v3.mp4"] = 100
    config = AcquireConfig(cache_dir=tmp_path / "cache", youtube=_config(template, attempts=1))
    first = acquire(manifest, config)
    assert list(first["outcome"]) == ["downloaded", "unavailable", "network_error"]
    assert set(first["source_kind"]) == {"youtube"}
    handler.failures.clear()
    handler.requests.clear()
    second = acquire(manifest, config)
    assert list(second["outcome"]) == ["downloaded", "unavailable", "downloaded"]
    assert set(handler.requests) == {"/v3.mp4"}  # only the transient failure was fetched again
    assert second.loc[0, "path"] == first.loc[0, "path"]
    Path(second.loc[0, "path"]).unlink()  # a file lost since: fetched again
    handler.requests.clear()
    third = acquire(manifest, config)
    assert set(handler.requests) == {"/v1.mp4"} and third["outcome"][0] == "downloaded"


def test_rate_limit_and_ranges_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options, ranged = youtube._ydl_options(tmp_path / "c", 2.0, 12.0, YouTubeConfig(rate_limit_bytes=1000))
    assert options["ratelimit"] == 1000 and options["format"] == "best[height<=360]/worst"
    assert ranged == (shutil.which("ffmpeg") is not None)
    monkeypatch.setattr(youtube.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    options, ranged = youtube._ydl_options(tmp_path / "c", 2.0, 12.0, YouTubeConfig())
    assert ranged and options["force_keyframes_at_cuts"]
    assert list(options["download_ranges"]({}, None)) == [{"start_time": 2.0, "end_time": 12.0}]
    assert not youtube._ydl_options(tmp_path / "c", 2.0, math.nan, YouTubeConfig())[1]  # to the end: whole file


def test_bad_ids_are_rejected_before_any_download(tmp_path: Path) -> None:
    rows = pd.DataFrame({"clip_id": ["a", "b"], "source": ["ok", "../../etc"], "clip_start_s": 0.0, "clip_end_s": 1.0})
    with pytest.raises(ValueError, match="'../../etc'"):
        download_all(rows, tmp_path, YouTubeConfig(url_template="http://127.0.0.1:1/{id}"))
    with pytest.raises(ValueError, match="not a valid name"):
        download_clip("../x", "ok", 0.0, 1.0, tmp_path, YouTubeConfig(url_template="http://127.0.0.1:1/{id}"))
