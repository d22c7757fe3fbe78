"""Reference media: fetched safely, sniffed, probed, cached and decoded, for every engine.

netguard   which addresses may be fetched from
fetch      one bounded, pinned download
sniff      the format from the first bytes
probe      sizes and durations from headers, checked against the limits
reference  `Reference`: one checked reference, with image(), frames(fps), audio(rate)
cache      a shared disk cache keyed by URL, deduplicated by content
ingest     `fetch_references()`: a request's URLs in, `Reference`s out, all or nothing

refs = fetch_references_sync(urls, work_dir=scratch, policy=FetchPolicy(), cache=cache)
"""

from __future__ import annotations

from ..errors import MediaError
from .cache import CacheEntry, MediaCache
from .fetch import Fetched, FetchPolicy, NotModified, Validators, fetch, fetch_if_modified
from .ingest import fetch_references, fetch_references_sync, input_video_seconds
from .probe import ImageInfo, Limits, VideoInfo, probe
from .reference import Reference
from .sniff import Format, Kind, sniff

__all__ = [
    "MediaError",
    "CacheEntry",
    "MediaCache",
    "FetchPolicy",
    "Fetched",
    "NotModified",
    "Validators",
    "fetch",
    "fetch_if_modified",
    "fetch_references",
    "fetch_references_sync",
    "input_video_seconds",
    "ImageInfo",
    "Limits",
    "VideoInfo",
    "probe",
    "Reference",
    "Format",
    "Kind",
    "sniff",
]
