"""YouTube acquisition: yt-dlp against local HTTP servers on 127.0.0.1 (never the internet).

Two servers of the same files run in every test that downloads: one answers HTTP range
requests as video hosts do (the ranged path: ffmpeg fetches and cuts the range), one ignores
them as Python's http.server does (the ranged fetch fails; the whole file is fetched and cut
here). The ffmpeg is the pinned imageio-ffmpeg build, so whatever ffmpeg a machine has on
PATH changes nothing (one test puts a broken one first on PATH).
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest

from pipeline.media.acquire import AcquireConfig, acquire
from pipeline.media.youtube import (RANGED, WHOLE, WHOLE_CUT, YouTubeConfig, classify_error, download_all,
                                    download_clip, ydl_options)

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
    """Serves a folder, ignoring ``Range`` as Python's server does; answers 503 to the first
    ``failures[path]`` requests of a path; logs each request as (path, its Range header or "")."""

    failures: dict[str, int] = {}
    requests: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append((self.path, self.headers.get("Range", "")))
        if self.failures.get(self.path, 0) > 0:
            self.failures[self.path] -= 1
            self.send_error(503, "Service Unavailable")
            return
        super().do_GET()

    def copyfile(self, source: BinaryIO, outputfile: BinaryIO) -> None:
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):
            pass  # ffmpeg hangs up once it has read what it needs, as clients of real hosts do

    def log_message(self, *args: object) -> None:
        pass


class _RangeHandler(_Handler):
    """Also answers ``Range: bytes=a-b`` (``a-``, ``-n``) with 206 and that slice, as video hosts do."""

    def send_head(self) -> BinaryIO | None:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or match.groups() == ("", "") or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
        else:  # the last ``last`` bytes
            start, end = len(data) - int(last), len(data) - 1
        if start >= len(data) or start > end:
            self.send_error(416, "Range Not Satisfiable")
            return None
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(data[start:end + 1])


@dataclass(frozen=True)
class Host:
    """One 127.0.0.1 server: its URL template (``{id}``) and handler class (failures, request log)."""

    template: str
    handler: type[_Handler]


@pytest.fixture()
def hosts(tmp_path: Path, demo_dir: Path, demo_labels: pd.DataFrame) -> Iterator[dict[str, Host]]:
    """Two servers of one folder holding ``v1.mp4``..``v3.mp4``: ``ranged`` answers range requests,
    ``plain`` does not."""
    served = tmp_path / "served"
    served.mkdir()
    for name, rel in zip(("v1", "v2", "v3"), demo_labels["path"]):
        shutil.copy(demo_dir / rel, served / f"{name}.mp4")
    running = {}
    for kind, base in (("ranged", _RangeHandler), ("plain", _Handler)):
        handler = type(f"{kind}Handler", (base,), {"failures": {}, "requests": []})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running[kind] = (httpd, Host(f"http://127.0.0.1:{httpd.server_address[1]}/{{id}}.mp4", handler))
    yield {kind: host for kind, (_, host) in running.items()}
    for httpd, _ in running.values():
        httpd.shutdown()
        httpd.server_close()


def _config(template: str, **changes: object) -> YouTubeConfig:
    return YouTubeConfig(url_template=template, backoff_s=0.5, sleep_between_s=0.0, **changes)


def _frames(path: str | Path) -> np.ndarray:
    """Every decoded video frame: ``[T, H, W, 3]`` int16."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def _audio(path: str | Path) -> np.ndarray:
    """The decoded audio: ``[C, S]``."""
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def test_ranged_fetch_cuts_the_clip_exactly(tmp_path: Path, hosts: dict[str, Host]) -> None:
    host = hosts["ranged"]
    row = download_clip("clip1", "v1", 1.0, 3.0, tmp_path / "out", _config(host.template))
    assert (row["outcome"], row["fetch"], row["attempts"], row["message"]) == ("downloaded", RANGED, 1, "")
    assert Path(row["path"]) == tmp_path / "out" / "clip1.mp4" and row["local_start_s"] == 1.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip1.mp4"]
    assert any(re.fullmatch(r"bytes=[1-9]\d*-\d*", r) for _, r in host.handler.requests)  # ffmpeg seeked by range
    # Independent reference: the source decoded by PyAV (10 fps). Each clip frame is closest
    # to the source frame 1.0 s later: 20 frames, source frames 10..29, cut frame-exactly.
    clip, source = _frames(row["path"]), _frames(tmp_path / "served" / "v1.mp4")
    distance = np.abs(clip[:, None] - source[None]).mean(axis=(2, 3, 4))
    assert list(distance.argmin(axis=1)) == list(range(10, 30))
    assert _audio(row["path"]).shape[1] / 22050 == pytest.approx(2.0, abs=0.1)


def test_host_without_ranges_falls_back_to_the_whole_file_cut_here(
        tmp_path: Path, hosts: dict[str, Host], caplog: pytest.LogCaptureFixture) -> None:
    plain = hosts["plain"]
    row = download_clip("clip1", "v1", 1.0, 3.0, tmp_path / "out", _config(plain.template))
    assert (row["outcome"], row["fetch"], row["attempts"], row["local_start_s"]) == ("downloaded", WHOLE_CUT, 1, 1.0)
    assert row["message"].startswith("ranged fetch failed, whole file cut here: ERROR: ffmpeg exited with code")
    assert "clip1: ranged fetch failed" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip1.mp4"]  # the whole file is gone
    # The same ffmpeg with the same arguments: the same frames and samples as the ranged fetch.
    ranged = download_clip("clip1", "v1", 1.0, 3.0, tmp_path / "ranged", _config(hosts["ranged"].template))
    assert np.array_equal(_frames(row["path"]), _frames(ranged["path"]))
    assert np.array_equal(_audio(row["path"]), _audio(ranged["path"]))


# Run in a fresh interpreter: yt-dlp caches each ffmpeg it has probed for the life of the process.
_ON_BROKEN_PATH = """
import json, sys
from pipeline.media.youtube import YouTubeConfig, download_clip
rows = [download_clip(f"c_{n}", "v1", 1.0, 3.0, sys.argv[1], YouTubeConfig(url_template=t, sleep_between_s=0.0))
        for n, t in enumerate(sys.argv[2:])]
print(json.dumps([(r["outcome"], r["fetch"], r["path"]) for r in rows]))
"""


def test_an_ffmpeg_on_path_is_never_used(tmp_path: Path, hosts: dict[str, Host]) -> None:
    """Only a broken ffmpeg (and ffprobe) on PATH: both paths still work, through the pinned one."""
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in ("ffmpeg", "ffprobe"):
        (broken / name).write_text("#!/bin/sh\nexit 1\n")
        (broken / name).chmod(0o755)
    assert shutil.which("ffmpeg", path=str(broken)) == str(broken / "ffmpeg")
    done = subprocess.run([sys.executable, "-c", _ON_BROKEN_PATH, str(tmp_path / "out"), hosts["ranged"].template,
                           hosts["plain"].template], env={**os.environ, "PATH": str(broken)},
                          cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout.splitlines()[-1])
    assert [(outcome, fetch) for outcome, fetch, _ in rows] == [("downloaded", RANGED), ("downloaded", WHOLE_CUT)]
    ranged, cut_here = (_frames(path) for _, _, path in rows)
    assert len(ranged) == 20 and np.array_equal(ranged, cut_here)


@pytest.mark.parametrize("kind", ["ranged", "plain"])
def test_whole_video_when_ranges_are_off_or_the_clip_runs_to_the_end(
        tmp_path: Path, hosts: dict[str, Host], kind: str) -> None:
    served = tmp_path / "served" / "v1.mp4"
    for clip_id, end, config in (("off", 3.0, _config(hosts[kind].template, ranges=False)),
                                 ("open", math.nan, _config(hosts[kind].template))):
        row = download_clip(clip_id, "v1", 1.0, end, tmp_path / "out", config)
        assert (row["outcome"], row["fetch"], row["local_start_s"]) == ("downloaded", WHOLE, 0.0)
        assert Path(row["path"]).read_bytes() == served.read_bytes()  # cut later by the segmenter


@pytest.mark.parametrize(("kind", "fetch"), [("ranged", RANGED), ("plain", WHOLE_CUT)])
def test_transient_errors_are_retried_with_backoff(
        tmp_path: Path, hosts: dict[str, Host], kind: str, fetch: str) -> None:
    host = hosts[kind]
    host.handler.failures["/v2.mp4"] = 1
    waits: list[float] = []
    row = download_clip("c", "v2", 0.0, 5.0, tmp_path, _config(host.template), sleep=waits.append)
    assert (row["outcome"], row["fetch"], row["attempts"], waits) == ("downloaded", fetch, 2, [0.5])
    host.handler.failures["/v2.mp4"] = 10
    waits.clear()
    row = download_clip("d", "v2", 0.0, 5.0, tmp_path, _config(host.template), sleep=waits.append)
    assert (row["outcome"], row["fetch"], row["attempts"], waits) == ("network_error", "", 3, [0.5, 1.0])
    assert "503" in row["message"]
    waits.clear()
    row = download_clip("e", "absent", 0.0, 5.0, tmp_path, _config(host.template), sleep=waits.append)
    assert (row["outcome"], row["attempts"], waits) == ("unavailable", 1, [])  # permanent: no retry, no fallback


def test_rerun_skips_complete_and_retries_only_transient(tmp_path: Path, hosts: dict[str, Host]) -> None:
    template, handler = hosts["ranged"].template, hosts["ranged"].handler
    manifest = pd.DataFrame({"clip_id": ["ok", "gone", "flaky"], "source_kind": "youtube",
                             "source": ["v1", "absent", "v3"], "clip_start_s": 0.0, "clip_end_s": math.nan})
    handler.failures["/v3.mp4"] = 100
    config = AcquireConfig(cache_dir=tmp_path / "cache", youtube=_config(template, attempts=1))
    first = acquire(manifest, config)
    assert list(first["outcome"]) == ["downloaded", "unavailable", "network_error"]
    assert list(first["fetch"]) == [WHOLE, "", ""]
    assert set(first["source_kind"]) == {"youtube"}
    handler.failures.clear()
    handler.requests.clear()
    second = acquire(manifest, config)
    assert list(second["outcome"]) == ["downloaded", "unavailable", "downloaded"]
    assert {path for path, _ in handler.requests} == {"/v3.mp4"}  # only the transient failure was fetched again
    assert second.loc[0, "path"] == first.loc[0, "path"]
    Path(second.loc[0, "path"]).unlink()  # a file lost since: fetched again
    handler.requests.clear()
    third = acquire(manifest, config)
    assert {path for path, _ in handler.requests} == {"/v1.mp4"} and third["outcome"][0] == "downloaded"


def test_options_rate_limit_ranges_and_the_pinned_ffmpeg(tmp_path: Path) -> None:
    options = ydl_options(tmp_path / "c", YouTubeConfig(rate_limit_bytes=1000, socket_timeout_s=2.5))
    assert options["ratelimit"] == 1000 and options["format"] == "best[height<=360]/worst"
    assert options["ffmpeg_location"] == imageio_ffmpeg.get_ffmpeg_exe() and Path(options["ffmpeg_location"]).is_file()
    assert "download_ranges" not in options and "force_keyframes_at_cuts" not in options
    options = ydl_options(tmp_path / "c", YouTubeConfig(socket_timeout_s=2.5), (2.0, 12.0))
    assert options["force_keyframes_at_cuts"]
    assert list(options["download_ranges"]({}, None)) == [{"start_time": 2.0, "end_time": 12.0}]
    assert options["external_downloader_args"] == {"ffmpeg_i": ["-rw_timeout", "2500000"]}


def test_bad_ids_are_rejected_before_any_download(tmp_path: Path) -> None:
    rows = pd.DataFrame({"clip_id": ["a", "b"], "source": ["ok", "../../etc"], "clip_start_s": 0.0, "clip_end_s": 1.0})
    with pytest.raises(ValueError, match="'../../etc'"):
        download_all(rows, tmp_path, YouTubeConfig(url_template="http://127.0.0.1:1/{id}"))
    with pytest.raises(ValueError, match="not a valid name"):
        download_clip("../x", "ok", 0.0, 1.0, tmp_path, YouTubeConfig(url_template="http://127.0.0.1:1/{id}"))
