"""Speed of the wan engine's model: seconds per denoising step of Wan2.1-VACE-1.3B.

Usage:

    python bench/wan.py [--device cuda:0|cpu] [--steps N] [--json out.json]

Method
------
The real Wan2.1-VACE-1.3B transformer architecture (its published config: 30 layers, 12 heads
x 128, ffn 8960, VACE blocks on every second layer) is built with **random weights**, with a
small random text encoder (the transformer's 4096-wide text input, two layers) and, on a GPU,
Wan2.1's real VAE architecture. Nothing is downloaded. Random weights measure speed, not
quality: the arithmetic per step is the same as with the published weights.

For each size, one 5 s request (81 frames at 16 fps, one reference image, guidance 5, so two
transformer passes per step) runs `--steps` denoising steps; the pipeline's step callback
stamps each step's end, and s/step is the mean over the steps after the first (the first
pays for warm-up). The projection is s/step x 30 steps (the engine's default `wan_steps`)
and x 50 (Wan's reference setting), denoising only, beside published figures.

On a GPU (bfloat16, VAE in float32) it runs the real sizes: 832*480 (the 1.3B model's trained
480p area) and 1280*720 (a 720p-class size). On the CPU (float32, tiny VAE) those sizes would
take hours per step, so it runs them scaled down (`--scale`, default 1/16 of the width and
height: 48*32 and 80*48, still 81 frames), one step each, and says so; with one step, s/step
is the transformer's own time (hooks around its forward). CPU figures tell how the code path
behaves, not what a GPU does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

PUBLISHED = [
    "Wan2.1 T2V-1.3B, 5 s 480p, RTX 4090, no optimisations: about 4 min end to end (Wan2.1 README)",
    "Wan2.1-1.3B, 480p, H200, DiT only, 50 steps: 95 s (FastVideo)",
    "VACE takes 20-40% longer than the same-size T2V model (VACE maintainers)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0" if _cuda() else "cpu")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps per size (default 4 on GPU, 1 on CPU)")
    parser.add_argument("--scale", type=int, default=16, help="on the CPU, divide width and height by this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from PIL import Image

    from ref2video.engines.wan.random_pipeline import VACE_1_3B, make_pipeline

    gpu = args.device.startswith("cuda")
    steps = args.steps or (4 if gpu else 1)
    full = [(832, 480), (1280, 720)]
    sizes = full if gpu else [(_sixteen(w / args.scale), _sixteen(h / args.scale)) for w, h in full]
    started = time.perf_counter()
    pipe = make_pipeline(VACE_1_3B, real_vae=gpu)
    if gpu:
        pipe.transformer.to(torch.bfloat16)
        pipe.text_encoder.to(torch.bfloat16)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    print(f"built the 1.3B architecture ({params / 1e9:.2f}B parameters, random) on {args.device} "
          f"in {time.perf_counter() - started:.0f} s")
    # The transformer's own time: what a step costs, without the text encoder and the VAE.
    spent = [0.0]
    began = [0.0]

    def before(module, inputs):  # type: ignore[no-untyped-def]
        if gpu:
            torch.cuda.synchronize()
        began[0] = time.perf_counter()

    def after(module, inputs, output):  # type: ignore[no-untyped-def]
        if gpu:
            torch.cuda.synchronize()
        spent[0] += time.perf_counter() - began[0]

    pipe.transformer.register_forward_pre_hook(before)
    pipe.transformer.register_forward_hook(after)
    rows = []
    for width, height in sizes:
        spent[0] = 0.0
        stamps: list[float] = []

        def stamp(p, i, t, tensors, stamps=stamps):  # type: ignore[no-untyped-def]
            if gpu:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return tensors

        begin = time.perf_counter()
        pipe(prompt="a cat walks across a sunny kitchen", negative_prompt="blurry",
             reference_images=[Image.new("RGB", (320, 240), (200, 60, 40))], height=height, width=width,
             num_frames=81, num_inference_steps=steps, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(0), output_type="np", callback_on_step_end=stamp)
        total = time.perf_counter() - begin
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else spent[0]
        row = {"size": f"{width}*{height}", "frames": 81, "steps": steps, "s_per_step": round(per_step, 2),
               "transformer_s_per_step": round(spent[0] / steps, 2),
               "projected_s_30_steps": round(per_step * 30), "projected_s_50_steps": round(per_step * 50),
               "call_s": round(total, 1)}
        rows.append(row)
        print(f"{row['size']}: {per_step:.2f} s/step (CFG, 2 passes); 30 steps = {per_step * 30:.0f} s, "
              f"50 steps = {per_step * 50:.0f} s of denoising; whole call {total:.0f} s")
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device, "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "scaled_down": not gpu, "weights": "random (speed, not quality)", "rows": rows, "published": PUBLISHED,
    }
    if not gpu:
        print(f"CPU run: sizes scaled down to 1/{args.scale} of 832*480 and 1280*720 (same 81 frames); "
              "a GPU runs the real sizes")
    print("random weights: these figures measure speed, not quality")
    for line in PUBLISHED:
        print(f"published: {line}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _sixteen(value: float) -> int:
    return max(16, round(value / 16) * 16)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    main()
