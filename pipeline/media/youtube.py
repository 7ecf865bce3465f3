"""YouTube acquisition through yt-dlp's Python API, with a typed outcome per clip.

One file with both audio and video at a bounded resolution (``best[height<=360]``), and
only the clip's time range: ffmpeg fetches and cuts the range (yt-dlp's ``download_ranges``
with ``force_keyframes_at_cuts``, so the cut is frame-exact). The ffmpeg is the static build
pinned in the ``imageio-ffmpeg`` package, never whatever is on PATH, so every machine takes
the same path and cuts alike. When the ranged fetch fails (a host that does not answer HTTP
range requests), the whole file is fetched and the same ffmpeg cuts it here with the same
arguments; the outcome row's ``fetch`` says which was done. Retries with backoff for
transient errors, and a rate limit. The outcome table is the dataset's availability
report. Re-running keeps what is complete and retries only transient failures.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import pandas as pd
import yt_dlp
from tqdm import tqdm
from yt_dlp.postprocessor.ffmpeg import EXT_TO_OUT_FORMATS, FFmpegPostProcessor
from yt_dlp.utils import DownloadError, download_range_func

from pipeline.io.atomic import atomic_path
from pipeline.media.segment import clip_path
from pipeline.vocab import CLIP_ID_PATTERN

log = logging.getLogger(__name__)

DOWNLOADED = "downloaded"
PERMANENT = ("unavailable", "private", "removed", "region_blocked")
TRANSIENT = ("network_error",)
OUTCOMES = (DOWNLOADED, *PERMANENT, *TRANSIENT, "error")
OUTCOME_COLUMNS = ("clip_id", "source", "outcome", "path", "local_start_s", "fetch", "attempts", "message")
# How a downloaded file was made (the ``fetch`` column; "" when nothing was downloaded):
RANGED = "ranged"  # only the clip's range, fetched and cut by ffmpeg
WHOLE_CUT = "whole_cut"  # the ranged fetch failed: the whole file, cut here by the same ffmpeg
WHOLE = "whole"  # the whole video, cut later by the segmenter (ranges off, or a clip that runs to the end)
FETCHES = (RANGED, WHOLE_CUT, WHOLE)

# First match wins: the specific reasons come before the generic "Video unavailable".
_RULES: tuple[tuple[str, str], ...] = (
    ("private", r"private video|video is private"),
    ("region_blocked", r"not (?:made this video )?available in your country|blocked it in your country"
                       r"|geo.?restrict|from your location"),
    ("removed", r"has been removed|account associated with this video has been terminated"
                r"|no longer available|violating youtube's"),
    ("network_error", r"timed? ?out|temporary failure in name resolution|connection (?:refused|reset|aborted)"
                      r"|network is unreachable|remote end closed|http error 429|too many requests"
                      r"|http error 5\d\d|urlopen error|failed to establish a new connection|\bssl\b|incomplete read"
                      r"|confirm you.re not a bot"),
    ("unavailable", r"video unavailable|is not available|http error 404|http error 410|does not exist"
                    r"|unsupported url|sign in to confirm your age|members.only|requested format is not available"),
)


def classify_error(message: str) -> str:
    """Map a yt-dlp error message to an outcome in :data:`OUTCOMES` (``error`` when unknown)."""
    text = message.lower()
    for outcome, pattern in _RULES:
        if re.search(pattern, text):
            return outcome
    return "error"


@dataclass(frozen=True)
class YouTubeConfig:
    """Download settings; ``url_template`` takes ``{id}`` (tests point it at 127.0.0.1)."""

    url_template: str = "https://www.youtube.com/watch?v={id}"
    format: str = "best[height<=360]/worst"  # one file holding audio and video, at most 360 p
    ranges: bool = True  # fetch only the clip's range (else the whole video, cut by the segmenter)
    attempts: int = 3  # tries per clip for transient errors
    backoff_s: float = 5.0  # wait before try k+1: backoff_s * 2**(k-1)
    rate_limit_bytes: int | None = 5_000_000  # bytes per second, yt-dlp's ``ratelimit`` (whole-file fetches)
    sleep_between_s: float = 1.0  # pause between clips, to be gentle with the site
    socket_timeout_s: float = 30.0  # also ffmpeg's read/write timeout on ranged fetches


def ydl_options(target: Path, config: YouTubeConfig, section: tuple[float, float] | None = None) -> dict[str, object]:
    """yt-dlp options that fetch into ``<target>.<ext>``: only ``section`` (start, end seconds) when given.

    ffmpeg is always the pinned build (``imageio_ffmpeg.get_ffmpeg_exe()``), for ranges and fix-ups alike.
    """
    options: dict[str, object] = {
        "format": config.format,
        "outtmpl": {"default": str(target).replace("%", "%%") + ".%(ext)s"},
        "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
        "retries": 2, "fragment_retries": 2, "socket_timeout": config.socket_timeout_s,
        "logger": logging.getLogger("yt_dlp"),
        "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(),
    }
    if config.rate_limit_bytes:
        options["ratelimit"] = config.rate_limit_bytes
    if section is not None:
        options["download_ranges"] = download_range_func(None, [section])
        options["force_keyframes_at_cuts"] = True  # re-encode from the range start, so the clip is frame-true
        # ffmpeg's input options (microseconds): a stalled host fails the try instead of hanging it
        options["external_downloader_args"] = {"ffmpeg_i": ["-rw_timeout", str(round(config.socket_timeout_s * 1e6))]}
    return options


@contextmanager
def _youtube_dl(options: dict[str, object]) -> Iterator[yt_dlp.YoutubeDL]:
    """A ``YoutubeDL`` for ``options`` whose every ffmpeg lookup finds ``options["ffmpeg_location"]``.

    The option reaches the downloads and fix-ups, but yt-dlp decides whether a range can be
    fetched without its options, from PATH (yt-dlp issue #2191); its own command line sets the
    location where that check looks, and so does this, for the ``with`` block only.
    """
    token = FFmpegPostProcessor._ffmpeg_location.set(options["ffmpeg_location"])
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            yield ydl
    finally:
        FFmpegPostProcessor._ffmpeg_location.reset(token)


def _download(ydl: yt_dlp.YoutubeDL, info: dict[str, object]) -> Path:
    """Download an extracted video with ``ydl``'s options; the file written. Raises ``DownloadError``."""
    done = ydl.process_ie_result(dict(info), download=True)
    downloads = done.get("requested_downloads") or [{}]
    return Path(downloads[0].get("filepath") or ydl.prepare_filename(done))


def _cut(source: Path, target: Path, start_s: float, end_s: float) -> Path:
    """Cut ``[start_s, end_s)`` of the local file ``source`` into ``<target><source's suffix>``; that path.

    The pinned ffmpeg, cutting as yt-dlp has it cut a ranged fetch with ``force_keyframes_at_cuts``
    (``-ss`` and ``-t`` on the input, re-encoded into the same container), so both paths make the
    same clip. Written atomically. Raises ``DownloadError`` with ffmpeg's message when it fails.
    """
    out = target.with_name(target.name + source.suffix)
    with atomic_path(out) as tmp:
        args = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-hide_banner",
                "-ss", str(start_s), "-t", str(end_s - start_s), "-i", str(source),
                "-f", EXT_TO_OUT_FORMATS.get(source.suffix[1:], source.suffix[1:]), str(tmp)]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode:
            raise DownloadError(f"cutting {source} with ffmpeg failed (exit {done.returncode}): {done.stderr.strip()}")
    return out


def _fetch(clip_id: str, url: str, target: Path, start_s: float, end_s: float,
           config: YouTubeConfig) -> tuple[Path, str, str]:
    """Fetch one clip by the first route that works: (file, :data:`FETCHES` value, why not ranged or "").

    The video is looked up once; a failed ranged download (ffmpeg's exit code is all it
    tells) falls back to the whole file. Raises ``DownloadError``.
    """
    ranged = config.ranges and end_s == end_s  # NaN end: the clip runs to the end of the video
    with _youtube_dl(ydl_options(target, config, (start_s, end_s) if ranged else None)) as ydl:
        info = ydl.extract_info(url, download=False)  # the video's own errors (unavailable, private, ...) end here
        if not ranged:
            return _download(ydl, info), WHOLE, ""
        try:
            return _download(ydl, info), RANGED, ""
        except DownloadError as error:
            Path(ydl.prepare_filename(info) + ".part").unlink(missing_ok=True)  # what ffmpeg wrote before failing
            log.warning("%s: ranged fetch failed (%s); fetching the whole file to cut it here", clip_id, error)
            why = f"ranged fetch failed, whole file cut here: {error}"
    with _youtube_dl(ydl_options(target.with_name(target.name + ".whole"), config)) as ydl:
        whole = _download(ydl, info)
    try:
        return _cut(whole, target, start_s, end_s), WHOLE_CUT, why
    finally:
        whole.unlink(missing_ok=True)


def download_clip(
    clip_id: str, video_id: str, start_s: float, end_s: float, out_dir: str | os.PathLike[str],
    config: YouTubeConfig = YouTubeConfig(), *, sleep: Callable[[float], None] = time.sleep,
) -> dict[str, object]:
    """Download one clip into ``out_dir/<clip_id>.<ext>``; return its outcome row (:data:`OUTCOME_COLUMNS`).

    ``local_start_s`` is the source time at which the local file starts (the range start
    for a ranged or locally cut clip, else 0); ``fetch`` says how the file was made
    (:data:`FETCHES`), and ``message`` why the range was not fetched when it was cut here.
    """
    target = clip_path(out_dir, clip_id, "")
    url = config.url_template.format(id=video_id)
    row: dict[str, object] = {"clip_id": clip_id, "source": video_id, "outcome": "error", "path": "",
                              "local_start_s": 0.0, "fetch": "", "attempts": 0, "message": ""}
    for attempt in range(1, config.attempts + 1):
        row["attempts"] = attempt
        try:
            path, fetch, why = _fetch(clip_id, url, target, start_s, end_s, config)
        except DownloadError as error:
            row["message"] = str(error)
            row["outcome"] = classify_error(str(error))
            if row["outcome"] not in TRANSIENT or attempt == config.attempts:
                return row
            log.warning("%s: %s; try %d of %d", clip_id, error, attempt + 1, config.attempts)
            sleep(config.backoff_s * 2 ** (attempt - 1))
            continue
        row.update(outcome=DOWNLOADED, path=str(path), local_start_s=0.0 if fetch == WHOLE else start_s,
                   fetch=fetch, message=why)
        return row
    return row


def download_all(
    rows: pd.DataFrame, out_dir: str | os.PathLike[str], config: YouTubeConfig = YouTubeConfig(),
    *, previous: pd.DataFrame | None = None, sleep: Callable[[float], None] = time.sleep,
) -> pd.DataFrame:
    """Download the manifest ``rows`` (``source`` = video id); return the outcome table.

    Rows of ``previous`` (an earlier outcome table) that are downloaded with the file still
    there, or failed permanently (:data:`PERMANENT`), are kept as they are; the rest
    (``network_error``, and unclassified ``error`` which may be transient) are tried again.
    """
    bad = [str(s) for s in rows["source"] if not CLIP_ID_PATTERN.match(str(s))]
    if bad:
        raise ValueError(f"YouTube ids must match {CLIP_ID_PATTERN.pattern}; {len(bad)} do not, e.g. {bad[0]!r}")
    kept = {}
    if previous is not None:
        for old in previous.to_dict("records"):
            done = old["outcome"] == DOWNLOADED and old["path"] and Path(old["path"]).is_file()
            if done or old["outcome"] in PERMANENT:
                kept[old["clip_id"]] = old
    results = []
    todo = [row for row in rows.itertuples(index=False) if row.clip_id not in kept]
    for number, row in enumerate(tqdm(todo, desc="youtube", unit="clip", disable=None)):
        if number and config.sleep_between_s:
            sleep(config.sleep_between_s)
        results.append(download_clip(row.clip_id, str(row.source), float(row.clip_start_s), float(row.clip_end_s),
                                     out_dir, config, sleep=sleep))
    results += [kept[c] for c in rows["clip_id"] if c in kept]
    return pd.DataFrame(results, columns=list(OUTCOME_COLUMNS))
