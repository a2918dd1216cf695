"""Searching the cache config against calibration videos."""
from .engine import CacheSearch
from .records import RunRecord
from .report import SearchReport
from .runner import check_videos

__all__ = ["CacheSearch", "RunRecord", "SearchReport", "check_videos"]
