"""The engine interface: small, and free of HTTP and SQL (ARCHITECTURE.md, decision 3).

An engine is any object with a `name`, a `load()` called once before first use, and
`generate(request, context) -> GenerationResult`. It reports progress with
`context.report_step(i, total)`, checks `context.should_cancel()` (or calls
`context.raise_if_canceled()`) between steps, writes its output below `request.scratch_dir`,
and raises `ref2video.errors.EngineError` (or `RetryableEngineError`) to fail.

    class Solid:
        name = "solid"
        def load(self) -> None: ...
        def generate(self, request, context):
            for i in range(10):
                context.raise_if_canceled()
                context.report_step(i + 1, 10)
            return GenerationResult(video_path=request.scratch_dir / "out.mp4", ...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..spec import TaskSpec

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "JobContext"]


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What an engine is asked to make: the checked request, and its media fetched and checked
    (`ref2video.media.Reference`s). `references[N - 1]` is what the prompt calls characterN
    (`spec.prompt_with_character_names()` writes the media form's names so too); the media
    form may add a `first_frame` to open on and a voice per reference number."""

    task_id: str
    spec: TaskSpec
    scratch_dir: Path
    attempt: int = 1
    references: tuple[Any, ...] = ()
    first_frame: Any | None = None
    voices: Mapping[int, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """A finished video file and the facts usage is computed from."""

    video_path: Path
    output_seconds: int
    input_video_seconds: float = 0.0
    has_audio: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class JobContext(Protocol):
    """What a running engine may ask of the worker."""

    def report_step(self, step: int, total: int) -> None: ...

    def should_cancel(self) -> bool: ...

    def raise_if_canceled(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    name: str

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult: ...
