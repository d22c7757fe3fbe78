"""The request in the model's terms, with no torch: prompt words, sizes, frame counts and the
resampling from Wan's 16 fps to the service's 30 fps."""

from __future__ import annotations

import math
import re

__all__ = ["NATIVE_FPS", "DEFAULT_NEGATIVE", "describe_characters", "generation_size", "native_frames",
           "segment_lengths", "resample_indices", "cover_box"]

NATIVE_FPS = 16

# Wan's own default negative prompt (wan/configs/shared_config.py, sample_neg_prompt).
DEFAULT_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，"
                    "最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，"
                    "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
                    "杂乱的背景，三条腿，背景人很多，倒着走")

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
_CJK_ORDINALS = "一二三四五六七八九"


def describe_characters(prompt: str) -> str:
    """`characterN` (and `角色N`) in words the model reads: the reference pictures come in
    order, so "character2" becomes "the second character"."""

    def english(match: re.Match[str]) -> str:
        n = int(match.group(1))
        word = _ORDINALS[n - 1] if 1 <= n <= len(_ORDINALS) else f"number {n}"
        return f"the {word} character"

    def chinese(match: re.Match[str]) -> str:
        n = int(match.group(1))
        return f"第{_CJK_ORDINALS[n - 1]}个角色" if 1 <= n <= len(_CJK_ORDINALS) else f"第{n}个角色"

    text = re.sub(r"\b[Cc]haracter\s?(\d+)\b", english, prompt)
    return re.sub(r"角色\s?(\d+)", chinese, text)


def generation_size(width: int, height: int, area: int) -> tuple[int, int]:
    """The size to generate at: `area` pixels in the request's aspect ratio, in multiples of 16."""
    scale = math.sqrt(area / (width * height))
    return max(16, round(width * scale / 16) * 16), max(16, round(height * scale / 16) * 16)


def native_frames(seconds: float) -> int:
    """Frames at 16 fps for `seconds`, of the form 4k+1 (2 s: 33, 5 s: 81, 10 s: 161)."""
    return 4 * max(1, math.ceil(seconds * NATIVE_FPS / 4)) + 1


def segment_lengths(total: int, most: int, overlap: int) -> list[int]:
    """Frame counts (each 4k+1, at most `most`) of the passes that make `total` frames, each
    pass after the first repeating the previous one's last `overlap` frames."""
    most = (most - 1) // 4 * 4 + 1
    lengths = [min(total, most)]
    made = lengths[0]
    while made < total:
        length = min(most, 4 * math.ceil((total - made + overlap - 1) / 4) + 1)
        lengths.append(length)
        made += length - overlap
    return lengths


def resample_indices(native: int, frames: int, fps: int) -> list[int]:
    """For each of `frames` output frames at `fps`, the 16 fps frame showing that moment."""
    return [min(native - 1, round(j * NATIVE_FPS / fps)) for j in range(frames)]


def cover_box(src_w: int, src_h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred part of a `src_w` x `src_h` picture with the aspect ratio of `width` x `height`."""
    scale = max(width / src_w, height / src_h)
    w, h = width / scale, height / scale
    x, y = (src_w - w) / 2, (src_h - h) / 2
    return x, y, x + w, y + h
