"""YouTube acquisition through yt-dlp's Python API, with a typed outcome per clip.

One file with both audio and video at a bounded resolution (``best[height<=360]``), only
the clip's time range when ffmpeg is present to cut it (yt-dlp needs ffmpeg for ranges;
without it the whole video is fetched and the segmenter cuts it), retries with backoff
for transient errors, and a rate limit. The outcome table is the dataset's availability
report. Re-running keeps what is complete and retries only transient failures.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yt_dlp
from tqdm import tqdm
from yt_dlp.utils import DownloadError, download_range_func

from pipeline.media.segment import clip_path
from pipeline.vocab import CLIP_ID_PATTERN

log = logging.getLogger(__name__)

DOWNLOADED = "downloaded"
PERMANENT = ("unavailable", "private", "removed", "region_blocked")
TRANSIENT = ("network_error",)
OUTCOMES = (DOWNLOADED, *PERMANENT, *TRANSIENT, "error")
OUTCOME_COLUMNS = ("clip_id", "source", "outcome", "path", "local_start_s", "attempts", "message")

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
    ranges: bool = True  # fetch only the clip's range when ffmpeg can cut it
    attempts: int = 3  # tries per clip for transient errors
    backoff_s: float = 5.0  # wait before try k+1: backoff_s * 2**(k-1)
    rate_limit_bytes: int | None = 5_000_000  # bytes per second, yt-dlp's ``ratelimit``
    sleep_between_s: float = 1.0  # pause between clips, to be gentle with the site
    socket_timeout_s: float = 30.0


def _ydl_options(target: Path, start_s: float, end_s: float, config: YouTubeConfig) -> tuple[dict[str, object], bool]:
    options: dict[str, object] = {
        "format": config.format,
        "outtmpl": {"default": str(target).replace("%", "%%") + ".%(ext)s"},
        "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
        "retries": 2, "fragment_retries": 2, "socket_timeout": config.socket_timeout_s,
        "logger": logging.getLogger("yt_dlp"),
    }
    if config.rate_limit_bytes:
        options["ratelimit"] = config.rate_limit_bytes
    ranged = config.ranges and shutil.which("ffmpeg") is not None and end_s == end_s  # NaN: whole video
    if ranged:
        options["download_ranges"] = download_range_func(None, [(start_s, end_s)])
        options["force_keyframes_at_cuts"] = True  # cut exactly at the range, so the clip is frame-true
    return options, ranged


def download_clip(
    clip_id: str, video_id: str, start_s: float, end_s: float, out_dir: str | os.PathLike[str],
    config: YouTubeConfig = YouTubeConfig(), *, sleep: Callable[[float], None] = time.sleep,
) -> dict[str, object]:
    """Download one clip into ``out_dir/<clip_id>.<ext>``; return its outcome row (:data:`OUTCOME_COLUMNS`).

    ``local_start_s`` is the source time at which the local file starts (the range start
    for a ranged download, else 0).
    """
    target = clip_path(out_dir, clip_id, "")
    options, ranged = _ydl_options(target, start_s, end_s, config)
    url = config.url_template.format(id=video_id)
    row: dict[str, object] = {"clip_id": clip_id, "source": video_id, "outcome": "error", "path": "",
                              "local_start_s": start_s if ranged else 0.0, "attempts": 0, "message": ""}
    for attempt in range(1, config.attempts + 1):
        row["attempts"] = attempt
        try:
            with yt_dlp.YoutubeDL(options) as ydl:
                info = ydl.extract_info(url, download=True)
        except DownloadError as error:
            row["message"] = str(error)
            row["outcome"] = classify_error(str(error))
            if row["outcome"] not in TRANSIENT or attempt == config.attempts:
                return row
            log.warning("%s: %s; try %d of %d", clip_id, error, attempt + 1, config.attempts)
            sleep(config.backoff_s * 2 ** (attempt - 1))
            continue
        downloads = info.get("requested_downloads") or [{}]
        path = downloads[0].get("filepath") or ydl.prepare_filename(info)
        row.update(outcome=DOWNLOADED, path=str(path), message="")
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
