"""Searching the cache config against calibration videos."""
from .engine import CacheSearch, check_videos
from .report import SearchReport

__all__ = ["CacheSearch", "SearchReport", "check_videos"]
