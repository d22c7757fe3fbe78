"""Engines turn a checked request into a video file. See `base.Engine`."""

from .base import Engine, GenerationRequest, GenerationResult, JobContext

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "JobContext"]
