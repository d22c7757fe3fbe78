"""Render an example preview and save still frames for docs/preview.md.

    python scripts/preview_stills.py [--out docs/images]

The references are drawn here (two cut-out characters, a scene, a short animated clip), so
the example needs nothing from the network.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ref2video.engines.base import GenerationRequest  # noqa: E402
from ref2video.engines.preview.engine import PreviewEngine  # noqa: E402
from ref2video.engines.preview.plan import RefShape, make_plan  # noqa: E402
from ref2video.engines.preview.script import read_prompt  # noqa: E402
from ref2video.media.probe import probe  # noqa: E402
from ref2video.media.reference import Reference  # noqa: E402
from ref2video.spec import TaskSpec  # noqa: E402

PROMPT = ("Character1 walks into character3 and waves. Character1 says to Character2: 'Shall we play it again?' "
          "Character2 replies: 'Sounds good!' Then character1, character2 and character4 dance.")


def figure(path: Path, body: tuple[int, int, int], hair: tuple[int, int, int]) -> Path:
    """A simple cut-out character with a transparent background."""
    img = Image.new("RGBA", (500, 900), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((110, 330, 390, 760), 80, fill=(*body, 255))
    d.rectangle((150, 740, 220, 890), fill=(40, 40, 60, 255))
    d.rectangle((280, 740, 350, 890), fill=(40, 40, 60, 255))
    d.ellipse((140, 60, 360, 320), fill=(245, 205, 170, 255))
    d.chord((130, 40, 370, 260), 180, 360, fill=(*hair, 255))
    d.ellipse((195, 170, 220, 195), fill=(30, 30, 30, 255))
    d.ellipse((280, 170, 305, 195), fill=(30, 30, 30, 255))
    d.arc((205, 200, 295, 270), 20, 160, fill=(150, 60, 60, 255), width=6)
    img.save(path)
    return path


def scene(path: Path) -> Path:
    """A wide landscape: sky, sun, hills."""
    w, h = 1920, 1080
    sky = np.zeros((h, w, 3), np.uint8)
    sky[:] = np.linspace([120, 180, 240], [250, 220, 180], h)[:, None, :].astype(np.uint8)
    img = Image.fromarray(sky)
    d = ImageDraw.Draw(img)
    d.ellipse((1450, 120, 1650, 320), fill=(255, 230, 120))
    d.ellipse((-400, 650, 1100, 1500), fill=(90, 160, 90))
    d.ellipse((700, 700, 2400, 1600), fill=(70, 140, 80))
    img.save(path, quality=92)
    return path


def clip(path: Path) -> Path:
    """Three seconds of a bouncing ball, with a soft tone."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 480, 640, "yuv420p"
        a = out.add_stream("aac", rate=48000, layout="stereo")
        for i in range(90):
            img = Image.new("RGB", (480, 640), (250, 240, 225))
            y = 480 - int(abs(np.sin(i / 90 * 3 * np.pi)) * 380)
            ImageDraw.Draw(img).ellipse((170, y, 310, y + 140), fill=(230, 90, 60))
            frame = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())
        t = np.arange(3 * 48000) / 48000
        tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
        for s in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(np.stack([tone[s : s + 1024]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = 48000, s, Fraction(1, 48000)
            out.mux(a.encode(frame))
        out.mux(a.encode())
    return path


class Quiet:
    def report_step(self, step: int, total: int) -> None: ...
    def should_cancel(self) -> bool: return False
    def raise_if_canceled(self) -> None: ...


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = [figure(root / "hero.png", (70, 120, 210), (90, 50, 20)),
                 figure(root / "friend.png", (210, 80, 110), (20, 20, 20)),
                 scene(root / "meadow.jpg"), clip(root / "ball.mp4")]
        refs = [Reference.from_info(i, f.name, f, probe(f)) for i, f in enumerate(files, 1)]
        spec = TaskSpec(model="wan2.6-r2v-flash", prompt=PROMPT, reference_urls=tuple(f.name for f in files),
                        size="1280*720", duration=8, shot_type="multi", seed=11, watermark=True)
        engine = PreviewEngine()
        engine.load()
        result = engine.generate(GenerationRequest("example", spec, root, references=tuple(refs)), Quiet())
        hints = {r.index: r.kind == "image" and not r.has_alpha and r.width > r.height * 1.2 for r in refs}
        plan = make_plan(read_prompt(PROMPT, 4, scene_hints=hints),
                         [RefShape(r.index, r.kind, r.width, r.height) for r in refs],
                         width=1280, height=720, duration=8, shot_type="multi", seed=11)
        wanted = {}
        for n, shot in enumerate(plan.shots, 1):
            cue = next((c for c in plan.cues if shot.start / 30 <= c.start < shot.end / 30), None)
            frame = int((cue.start + 0.5) * 30) if cue else (shot.start + shot.end) // 2
            wanted[frame] = f"preview-shot{n}.png"
        with av.open(str(result.video_path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in wanted:
                    frame.to_image().save(args.out / wanted[i])
        print("shots:", [(s.framing, s.characters) for s in plan.shots], "cues:", plan.cues)
        print("saved:", sorted(wanted.values()))


if __name__ == "__main__":
    main()
