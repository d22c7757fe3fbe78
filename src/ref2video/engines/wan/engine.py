"""The wan engine: reference-to-video with open Wan VACE weights (diffusers' WanVACEPipeline).

A request becomes one or more pipeline passes ("segments"):

* references in request order (`character1` first) go to `reference_images`; a video
  reference gives its middle frame;
* the prompt's `characterN` names become "the first character" etc.;
* the model generates at its trained area in the request's aspect ratio (multiples of 16),
  16 fps and 4k+1 frames; frames are then resized and centre-cropped to exactly W*H and
  resampled to exactly 30 fps and 30 * duration frames;
* a shot longer than one pass continues in segments, each conditioned on the previous
  segment's last frames (VACE's masked video input);
* the media form's `first_frame`, fitted to the output size, is kept as the first frame of
  the first segment the same way (the video opens on it);
* `shot_type: multi`: one shot per planned shot of the preview engine's planner, hard cuts,
  each conditioned on the references of the characters it shows;
* dialogue is spoken and mixed as the preview engine does; `audio: false` makes no sound.

torch and diffusers are imported by `load()`, never at import time.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...engines.base import GenerationRequest, GenerationResult, JobContext
from ...errors import EngineError, TaskCanceled
from ...media.reference import Reference
from ..preview.mix import VOICE_RATE, mix, speak_lines
from ..preview.plan import FPS, Plan, RefShape, make_plan
from ..preview.render import Encoder
from ..preview.script import Script, read_prompt
from . import speedups
from .mapping import (
    DEFAULT_NEGATIVE,
    cover_box,
    describe_characters,
    generation_size,
    native_frames,
    resample_indices,
    segment_lengths,
)

if TYPE_CHECKING:
    from ...config import Settings
    from ..preview.voice import Speech

__all__ = ["WanEngine", "WanOptions", "Segment"]

log = logging.getLogger(__name__)

_OVERLAP = 5  # 16 fps frames a continuing segment repeats from the one before (two latent frames)
_TRAINED_AREA = {30: 832 * 480, 40: 1280 * 720}  # transformer layers -> trained area (1.3B, 14B)


@dataclasses.dataclass(frozen=True)
class WanOptions:
    """The engine's settings (the `wan_*` settings of docs/configuration.md)."""

    model_dir: Path | None = None
    device: str = "cuda:0"
    dtype: str = "auto"
    steps: int = 30
    guidance: float = 5.0
    area: str = ""
    segment_frames: int = 81
    cpu_offload: bool = False
    lora: Path | None = None
    lora_steps: int = 4
    lora_guidance: float = 1.0
    attention: str = ""
    first_block_cache: float = 0.0

    def check(self) -> None:
        """Errors in the settings, told at start-up: those of the values themselves, a LoRA
        file that is not a LoRA, an attention backend diffusers lacks (`speedups.check`)."""
        if self.cpu_offload and not self.device.startswith("cuda"):
            raise ValueError(f"wan_cpu_offload needs a CUDA wan_device (wan_device is {self.device!r}): "
                             "diffusers' model CPU offload moves each part to the GPU while it runs")
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("wan_dtype float16 is not supported on the CPU; use float32 or auto")
        if self.area:
            w, _, h = self.area.partition("*")
            if int(w) < 16 or int(h) < 16:
                raise ValueError(f"wan_area {self.area!r} is smaller than 16*16")
        speedups.check(lora=self.lora, attention=self.attention)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One pipeline pass: `frames` at 16 fps, continuing the previous pass when `continues`."""

    shot: int
    frames: int
    prompt: str
    references: tuple[int, ...]  # reference numbers, in request order
    continues: bool
    seed: int


class WanEngine:
    """`output.engine = "wan"`. One task at a time per process (one device)."""

    name = "wan"
    capacity = 1

    def __init__(self, options: WanOptions | None = None) -> None:
        self.options = options or WanOptions()
        self.options.check()
        self._pipe: Any = None
        self._torch: Any = None
        self._speech: Speech | None = None
        self._area = 0
        self.calls: list[dict[str, Any]] = []  # what the last task asked of the pipeline (tests read it)

    @classmethod
    def from_settings(cls, settings: Settings) -> WanEngine:
        return cls(WanOptions(
            model_dir=settings.wan_model_dir, device=settings.wan_device, dtype=settings.wan_dtype,
            steps=settings.wan_steps, guidance=settings.wan_guidance, area=settings.wan_area,
            segment_frames=settings.wan_segment_frames, cpu_offload=settings.wan_cpu_offload, lora=settings.wan_lora,
            lora_steps=settings.wan_lora_steps, lora_guidance=settings.wan_lora_guidance,
            attention=settings.wan_attention, first_block_cache=settings.wan_first_block_cache,
        ))

    # -- loading --------------------------------------------------------------------------

    def load(self) -> None:
        """Load the pipeline once per process. A missing or wrong folder, an unavailable device
        or an unsupported speed-up is an EngineError with a code that says which."""
        from ..preview.voice import Speech

        opts = self.options
        folder = opts.model_dir
        if folder is None:
            raise EngineError("the wan engine has no model folder: set wan_model_dir", code="ModelNotConfigured")
        index = Path(folder) / "model_index.json"
        if not index.is_file():
            raise EngineError(f"no model weights in {str(folder)!r}: expected a diffusers folder with "
                              "model_index.json (docs/engines.md names the folders to download)",
                              code="ModelNotFound")
        try:
            kind = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError) as exc:
            raise EngineError(f"{str(index)!r} cannot be read: {exc}", code="ModelNotFound") from exc
        if kind != "WanVACEPipeline":
            raise EngineError(f"{str(folder)!r} holds a {kind} model; the wan engine needs a Wan VACE model "
                              "(WanVACEPipeline)", code="ModelNotSupported")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from diffusers import AutoencoderKLWan, WanVACEPipeline
        except ImportError as exc:
            raise EngineError(f"the wan engine needs torch and diffusers (pip install 'ref2video[wan]'): {exc}",
                              code="EngineUnavailable") from exc
        device = opts.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"wan_device is {device} but CUDA is not available", code="EngineUnavailable")
        on_gpu = device.startswith("cuda")
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
            opts.dtype, torch.bfloat16 if on_gpu else torch.float32)
        try:
            with warnings.catch_warnings():
                # diffusers 0.42 renames torch_dtype to dtype; older releases know only torch_dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                vae = AutoencoderKLWan.from_pretrained(str(folder), subfolder="vae", torch_dtype=torch.float32,
                                                       local_files_only=True)
                pipe = WanVACEPipeline.from_pretrained(str(folder), vae=vae, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise EngineError(f"the model in {str(folder)!r} could not be loaded: {exc}",
                              code="ModelNotFound") from exc
        speedups.apply(pipe, lora=opts.lora, attention=opts.attention, first_block_cache=opts.first_block_cache)
        if opts.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        layers = int(pipe.transformer.config.num_layers)
        if opts.area:
            w, _, h = opts.area.partition("*")
            self._area = int(w) * int(h)
        else:
            self._area = _TRAINED_AREA.get(layers, 832 * 480)
        self._pipe, self._torch = pipe, torch
        self._speech = Speech()
        log.info("wan engine loaded %s on %s (%s, %d layers, area %d)", folder, device, dtype, layers, self._area)

    # -- generating -----------------------------------------------------------------------

    def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        if self._pipe is None:
            raise EngineError("the wan engine is not loaded", code="EngineUnavailable")
        spec = request.spec
        refs: dict[int, Reference] = {r.index: r for r in request.references if r.kind in ("image", "video")}
        if not refs:
            raise EngineError("the wan engine needs at least one reference image or video", code="InvalidParameter")
        width, height = spec.width, spec.height
        gen_w, gen_h = generation_size(width, height, self._area)

        # The preview's reader and planner decide the shots, the lines and their timing.
        hints = {r.index: r.kind == "image" and not r.has_alpha and r.width > r.height * 1.2 for r in refs.values()}
        script = read_prompt(spec.prompt_with_character_names(), len(refs), scene_hints=hints)
        spoken: list[np.ndarray] = []
        if spec.audio and script.lines:
            assert self._speech is not None
            spoken = speak_lines(script.lines, len(refs), spec.seed, self._speech, self._recordings(request))
        context.raise_if_canceled()
        shapes = [RefShape(r.index, r.kind, r.width, r.height) for r in refs.values()]
        plan = make_plan(script, shapes, width=width, height=height, duration=spec.duration,
                         shot_type=spec.shot_type, seed=spec.seed,
                         speech_seconds={i: len(s) / 48000 for i, s in enumerate(spoken)})
        segments = self.segments(plan, script, spec.prompt_with_character_names(), sorted(refs), spec.seed)
        pictures = {i: _picture(ref) for i, ref in refs.items()}
        opening = _opening(request.first_frame, width, height) if request.first_frame is not None else None
        negative = spec.negative_prompt or DEFAULT_NEGATIVE
        track = mix(plan, spoken, refs, voiced=request.voices.keys()) if spec.audio else None

        steps, guidance = self._schedule()
        progress = _Progress(context, steps * len(segments))
        out = request.scratch_dir / "wan.mp4"
        self.calls = []
        try:
            with Encoder(out, width, height, FPS, track) as encoder:
                shot_frames: list[Image.Image] = []
                for k, segment in enumerate(segments):
                    kept: list[Image.Image] | None = shot_frames[-_OVERLAP:]
                    if not segment.continues:
                        shot_frames = []
                        kept = [opening] if k == 0 and opening is not None else None
                    frames = self._run(segment, [pictures[i] for i in segment.references], negative, gen_w, gen_h,
                                       steps, guidance, kept, progress)
                    shot_frames.extend(frames[_OVERLAP:] if segment.continues else frames)
                    last_of_shot = k + 1 == len(segments) or not segments[k + 1].continues
                    if last_of_shot:
                        shot = plan.shots[segment.shot]
                        for index in resample_indices(len(shot_frames), shot.frames, FPS):
                            encoder.write(_fit(shot_frames[index], width, height))
        except TaskCanceled:
            raise
        except EngineError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            self._free()
        videos = [r for r in refs.values() if r.kind == "video"]
        return GenerationResult(
            video_path=out, output_seconds=spec.duration,
            input_video_seconds=sum(r.duration or 0.0 for r in videos), has_audio=spec.audio,
            extra={"shots": len(plan.shots), "cuts": plan.cuts, "segments": len(segments),
                   "generated_size": f"{gen_w}*{gen_h}", "prompt": describe_characters(spec.prompt)},
        )

    def segments(self, plan: Plan, script: Script, prompt: str, references: Sequence[int], seed: int) -> list[Segment]:
        """The passes that make `plan`: per shot, as many as its length needs."""
        found: list[Segment] = []
        multi = len(plan.shots) > 1
        for number, shot in enumerate(plan.shots):
            text = prompt
            if multi and shot.beat is not None:
                text = script.beats[shot.beat].text or prompt
            cast = [c for c in shot.characters if c in references]
            if plan.scene is not None and plan.scene in references and plan.scene not in cast:
                cast.append(plan.scene)
            shown = tuple(sorted(cast)) if multi and cast else tuple(references)
            lengths = segment_lengths(native_frames(shot.frames / FPS), self.options.segment_frames, _OVERLAP)
            for k, length in enumerate(lengths):
                found.append(Segment(number, length, describe_characters(text), shown, k > 0,
                                     seed + len(found)))
        return found

    def _schedule(self) -> tuple[int, float]:
        opts = self.options
        return (opts.lora_steps, opts.lora_guidance) if opts.lora is not None else (opts.steps, opts.guidance)

    def _run(self, segment: Segment, pictures: list[Image.Image], negative: str, width: int, height: int,
             steps: int, guidance: float, previous: list[Image.Image] | None, progress: _Progress) -> list[Image.Image]:
        """One pipeline pass: `segment.frames` frames of `width` x `height` at 16 fps, opening
        on the `previous` frames when given."""
        torch = self._torch
        kwargs: dict[str, Any] = {}
        if previous:
            # VACE's masked video: the frames to open on (the previous segment's last frames, or
            # the first frame) kept (mask black), the rest generated (grey pixels, mask white).
            grey = Image.new("RGB", (width, height), (128, 128, 128))
            kept = [f.resize((width, height), Image.Resampling.BICUBIC) for f in previous]
            kwargs["video"] = kept + [grey] * (segment.frames - len(kept))
            kwargs["mask"] = ([Image.new("L", (width, height), 0)] * len(kept)
                              + [Image.new("L", (width, height), 255)] * (segment.frames - len(kept)))
        self.calls.append({"frames": segment.frames, "references": segment.references, "prompt": segment.prompt,
                           "continues": segment.continues, "seed": segment.seed, "size": (width, height)})
        generator = torch.Generator(device="cpu").manual_seed(segment.seed)
        result = self._pipe(
            prompt=segment.prompt, negative_prompt=negative, reference_images=pictures, height=height, width=width,
            num_frames=segment.frames, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
            output_type="np", callback_on_step_end=progress.callback, **kwargs,
        )
        video = np.asarray(result.frames[0])  # (frames, height, width, 3) floats in [0, 1]
        pixels = (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)
        return [Image.fromarray(frame) for frame in pixels]

    def _failure(self, exc: Exception) -> EngineError:
        torch = self._torch
        if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
            return EngineError("the GPU ran out of memory for this request; try a smaller size or duration, or set "
                               "wan_cpu_offload", code="ResourceExhausted")
        if isinstance(exc, ValueError):
            return EngineError(f"the model cannot make this request: {exc}", code="InvalidParameter")
        log.exception("the wan pipeline failed")
        return EngineError(f"the wan pipeline failed: {type(exc).__name__}: {exc}", code="InternalError")

    def _free(self) -> None:
        if self._pipe is not None:
            # A pass that ended early (a cancel, a failure) skipped the pipeline's own reset of
            # stateful hooks: the first-block cache would carry its state into the next task
            # (and fail it at another size). This also puts offloaded parts back on the CPU.
            self._pipe.maybe_free_model_hooks()
        gc.collect()
        torch = self._torch
        if torch is not None and self.options.device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def _recordings(request: GenerationRequest) -> dict[int, np.ndarray]:
        """Each character's own voice, as the preview engine finds it."""
        found = {}
        for ref in request.references:
            source = request.voices.get(ref.index) or (ref if ref.kind == "video" and ref.has_audio else None)
            pcm = source.audio(VOICE_RATE) if source is not None else None
            if pcm is not None and pcm.shape[1]:
                found[ref.index] = pcm.mean(axis=0)
        return found


class _Progress:
    """The pipeline's step callback: progress per denoising step, cancel within one step."""

    def __init__(self, context: JobContext, total: int) -> None:
        self.context, self.total, self.done = context, total, 0

    def callback(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.done += 1
        self.context.report_step(min(self.done, self.total), self.total)
        self.context.raise_if_canceled()
        return tensors


def _picture(ref: Reference) -> Image.Image:
    """A reference as the model sees it: an image as it is (transparency on white, as VACE
    expects), a video by its middle frame."""
    if ref.kind == "video":
        frames = list(ref.frames(2.0))
        return Image.fromarray(np.array(frames[len(frames) // 2]))
    image = ref.image()
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _opening(ref: Reference, width: int, height: int) -> Image.Image:
    """The media form's first frame as the video's frame 0: fitted to exactly `width` x `height`."""
    return Image.fromarray(_fit(_picture(ref), width, height))


def _fit(frame: Image.Image, width: int, height: int) -> np.ndarray:
    """Resize and centre-crop a generated frame to exactly `width` x `height`."""
    box = cover_box(frame.width, frame.height, width, height)
    return np.asarray(frame.resize((width, height), Image.Resampling.LANCZOS, box=box))

