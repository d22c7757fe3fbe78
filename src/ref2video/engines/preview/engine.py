"""The preview engine: a storyboard (animatic) from the user's own references, on the CPU.

It reads the prompt for who is named, what they say and where they are, plans one shot or
two to four, draws the references with gentle motion and subtitles, speaks the lines in a
voice per character, and encodes an exact-length H.264 MP4. No model weights, no network.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ...engines.base import GenerationRequest, GenerationResult, JobContext
from ...errors import EngineError
from ...media.reference import Reference
from .mix import VOICE_RATE, mix, speak_lines
from .plan import RefShape, make_plan
from .render import render
from .script import read_prompt

if TYPE_CHECKING:
    from ...config import Settings
    from .voice import Speech

__all__ = ["PreviewEngine"]


class PreviewEngine:
    """`output.engine = "preview"` on every task it makes.

    `badge` (on unless the operator turns off `preview_badge`) marks every frame as a
    storyboard preview. It is an operator's choice, not a request parameter, so it comes from
    the settings: the registry builds engines that have a `from_settings` with the service's
    settings, and a plain `PreviewEngine()` (tests, bench, scripts) keeps the default.
    """

    name = "preview"

    def __init__(self, *, badge: bool = True, capacity: int | None = None) -> None:
        self.badge = badge
        # A few tasks at once, one a core up to four: much of a render (numpy, the encoder)
        # runs outside the GIL, and more than four would only crowd a small host. The
        # operator's `engine_capacity` for "preview" overrides it.
        self.capacity = capacity or min(4, os.cpu_count() or 1)
        self._speech: Speech | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PreviewEngine:
        return cls(badge=settings.preview_badge)

    def load(self) -> None:
        from .voice import Speech

        self._speech = Speech()

    def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        spec = request.spec
        # 1. Check inputs: the worker fetched and checked the references already.
        refs: dict[int, Reference] = {r.index: r for r in request.references}
        if not refs:
            raise EngineError("the preview engine needs at least one fetched reference", code="InvalidParameter")

        # 2. Read the prompt (in characterN words, whichever form named the references); a
        #    wide picture that nobody acts as may be the scene.
        hints = {r.index: r.kind == "image" and not r.has_alpha and r.width > r.height * 1.2 for r in refs.values()}
        cutouts = [r.index for r in refs.values() if r.kind == "image" and r.has_alpha]
        script = read_prompt(spec.prompt_with_character_names(), len(refs), scene_hints=hints, cutouts=cutouts)

        # 3. Speak the lines first, so the plan can time the subtitles to the speech. Each
        #    speaker speaks at the height of their own voice, when the request gave one.
        spoken: list[np.ndarray] = []
        if spec.audio and script.lines:
            assert self._speech is not None
            spoken = speak_lines(script.lines, len(refs), spec.seed, self._speech, self._recordings(request))
        context.raise_if_canceled()

        # 4. Plan the shots.
        shapes = [RefShape(r.index, r.kind, r.width, r.height) for r in refs.values()]
        plan = make_plan(
            script, shapes, width=spec.width, height=spec.height, duration=spec.duration,
            shot_type=spec.shot_type, seed=spec.seed,
            speech_seconds={i: len(s) / 48000 for i, s in enumerate(spoken)},
        )

        # 5. Mix the sound, draw and encode.
        track = mix(plan, spoken, refs, voiced=request.voices.keys()) if spec.audio else None
        out = request.scratch_dir / "preview.mp4"

        def on_frame(number: int) -> None:
            context.raise_if_canceled()  # both only touch the context's attributes: cheap
            context.report_step(number + 1, plan.frames)

        opening = request.first_frame.image().convert("RGB") if request.first_frame is not None else None
        render(plan, refs, out, audio=track, watermark=spec.watermark, on_frame=on_frame, opening=opening,
               badge=self.badge)
        videos = [r for r in refs.values() if r.kind == "video"]
        return GenerationResult(
            video_path=out,
            output_seconds=spec.duration,
            input_video_seconds=sum(r.duration or 0.0 for r in videos),
            has_audio=spec.audio,
            extra={"shots": len(plan.shots), "cuts": plan.cuts},
        )

    @staticmethod
    def _recordings(request: GenerationRequest) -> dict[int, np.ndarray]:
        """Each character's own voice, mono at VOICE_RATE: the media form's reference_voice,
        else a video reference's sound (a video reference gives its character's voice)."""
        found = {}
        for ref in request.references:
            source = request.voices.get(ref.index) or (ref if ref.kind == "video" and ref.has_audio else None)
            pcm = source.audio(VOICE_RATE) if source is not None else None
            if pcm is not None and pcm.shape[1]:
                found[ref.index] = pcm.mean(axis=0)
        return found
