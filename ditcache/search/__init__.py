"""Searching the cache config against calibration videos."""
from .engine import CacheSearch
from .records import RunRecord
from .report import SearchReport
from .runner import check_videos
from .sensitivity import SensitivityProfile, StepSensitivity

__all__ = ["CacheSearch", "RunRecord", "SearchReport", "SensitivityProfile", "StepSensitivity", "check_videos"]
