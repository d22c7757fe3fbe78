"""How fast the preview engine renders, against the bare encoder in the same run.

The request: 10 s at 1920*1080, multi-shot, five references (two videos with sound, a cut-out
PNG, a photo, a wide scene) and two lines of dialogue with audio on. The ceiling: the same
number of plain frames through the same encoder with the same settings (`render.Encoder`),
no drawing, no sound. Reported: render seconds, ceiling seconds, their ratio (target <= 1.5),
and the share of real time (target <= 0.5, i.e. 5 s for 10 s of video).

    python bench/render.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ref2video.engines.base import GenerationRequest  # noqa: E402
from ref2video.engines.preview.engine import PreviewEngine  # noqa: E402
from ref2video.engines.preview.render import Encoder  # noqa: E402
from ref2video.media.probe import probe  # noqa: E402
from ref2video.media.reference import Reference  # noqa: E402
from ref2video.spec import TaskSpec  # noqa: E402
from tests.media.media_files import make_video  # noqa: E402

PROMPT = (
    "Character2 sits in a chair by the window holding character3, playing a soothing American country song "
    "next to character4. Character1 says to Character2: 'Sounds good, let us play it again'. "
    "Character5 laughs and says: 'One more time!'"
)


class Context:
    def report_step(self, step: int, total: int) -> None:
        pass

    def should_cancel(self) -> bool:
        return False

    def raise_if_canceled(self) -> None:
        pass


def make_references(root: Path) -> list[Reference]:
    from PIL import Image, ImageDraw

    cutout = Image.new("RGBA", (600, 900), (0, 0, 0, 0))
    draw = ImageDraw.Draw(cutout)
    draw.ellipse((150, 40, 450, 340), fill=(240, 200, 160, 255))
    draw.rounded_rectangle((120, 320, 480, 880), 60, fill=(60, 110, 200, 255))
    cutout.save(root / "object3.png")
    photo = np.random.default_rng(1).integers(0, 255, (900, 700, 3), np.uint8)
    Image.fromarray(photo).resize((700, 900)).save(root / "person5.jpg", quality=90)
    scene = np.zeros((1080, 1920, 3), np.uint8)
    scene[:] = np.linspace(30, 200, 1920)[None, :, None].astype(np.uint8)
    Image.fromarray(scene).save(root / "scene4.jpg", quality=90)
    files = [
        make_video(root / "role1.mp4", 4, size=(720, 1280), audio=True, fps=30),
        make_video(root / "role2.mp4", 3, size=(720, 1280), audio=True, fps=30),
        root / "object3.png",
        root / "scene4.jpg",
        root / "person5.jpg",
    ]
    return [Reference.from_info(i, f.name, f, probe(f)) for i, f in enumerate(files, 1)]


def render_once(engine: PreviewEngine, refs: list[Reference], work: Path) -> float:
    spec = TaskSpec(model="wan2.6-r2v", prompt=PROMPT, reference_urls=tuple(r.url for r in refs),
                    size="1920*1080", duration=10, shot_type="multi", audio=True, seed=42)
    started = time.perf_counter()
    engine.generate(GenerationRequest("bench", spec, work, references=tuple(refs)), Context())
    return time.perf_counter() - started


def ceiling_once(work: Path, frames: int = 300) -> float:
    plain = np.zeros((1080, 1920, 3), np.uint8)
    plain[:] = np.linspace(0, 255, 1920)[None, :, None].astype(np.uint8)
    started = time.perf_counter()
    with Encoder(work / "plain.mp4", 1920, 1080, 30, None) as encoder:
        for i in range(frames):
            # Drawn into the encoder's own frames, as the renderer does; moving, so the
            # encoder has work to do.
            canvas = encoder.canvas()
            shift = (i * 4) % 1920
            canvas[:, shift:] = plain[:, : 1920 - shift]
            canvas[:, :shift] = plain[:, 1920 - shift :]
            encoder.submit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    engine = PreviewEngine()
    engine.load()
    with tempfile.TemporaryDirectory(prefix="r2v-bench-") as tmp:
        root = Path(tmp)
        refs = make_references(root)
        for name in ("warm", *(f"r{i}" for i in range(args.repeat))):
            (root / name).mkdir()
        render_once(engine, refs, root / "warm")  # first run pays imports and font loading
        renders, ceilings = [], []
        for i in range(args.repeat):
            ceilings.append(ceiling_once(root))
            renders.append(render_once(engine, refs, root / f"r{i}"))
    render_s, ceiling_s = statistics.median(renders), statistics.median(ceilings)
    result = {
        "render_seconds": round(render_s, 2), "ceiling_seconds": round(ceiling_s, 2),
        "ratio_to_ceiling": round(render_s / ceiling_s, 2), "share_of_real_time": round(render_s / 10, 2),
        "renders": [round(x, 2) for x in renders], "ceilings": [round(x, 2) for x in ceilings],
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()},"
                   f" Python {platform.python_version()}",
        "load_average": os.getloadavg(),
    }
    print(f"render 10 s 1920x1080 multi-shot, 5 refs, dialogue: {render_s:.2f} s (median of {args.repeat})")
    print(f"ceiling: 300 plain frames, same encoder:            {ceiling_s:.2f} s")
    print(f"ratio to ceiling: {render_s / ceiling_s:.2f} (target <= 1.5);"
          f" share of real time: {render_s / 10:.2f} (target <= 0.5)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
