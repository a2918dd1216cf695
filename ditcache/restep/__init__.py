"""ReStep: search better sampling timesteps from calibration videos, and sample with them.

Needs diffusers (it is not part of the core namespace, which stays importable with torch alone).
"""
from .adaptor import ReStepAdaptor
from .config import ReStepSearchConfig
from .schedule import read_schedule, read_schedule_timesteps, schedule_to_timesteps, write_schedule
from ..schedulers import TimestepEulerAncestralScheduler

__all__ = [
    "ReStepAdaptor",
    "ReStepSearchConfig",
    "TimestepEulerAncestralScheduler",
    "read_schedule",
    "read_schedule_timesteps",
    "schedule_to_timesteps",
    "write_schedule",
]
