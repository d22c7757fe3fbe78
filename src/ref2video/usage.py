"""Usage of a finished task, as the provider reports it (docs/protocol.md §5)."""

from __future__ import annotations

import math
from typing import Any

from .engines.base import GenerationResult
from .protocol import MAX_BILLED_INPUT_SECONDS, tier_of
from .spec import TaskSpec

__all__ = ["make_usage"]


def make_usage(spec: TaskSpec, result: GenerationResult) -> dict[str, Any]:
    """Whole seconds: reference-video seconds (capped) plus output seconds."""
    billed_input = min(math.ceil(result.input_video_seconds - 1e-6), MAX_BILLED_INPUT_SECONDS)
    billed_input = max(billed_input, 0)
    output = int(result.output_seconds)
    usage: dict[str, Any] = {
        "duration": billed_input + output,
        "input_video_duration": billed_input,
        "output_video_duration": output,
        "video_count": 1,
        "SR": tier_of(spec.size),
    }
    # The media form reports its ratio where the urls form reports its size (docs/protocol.md §5).
    if spec.form == "media":
        usage["ratio"] = spec.ratio
    else:
        usage["size"] = spec.size
    usage["audio"] = bool(result.has_audio)
    return usage
