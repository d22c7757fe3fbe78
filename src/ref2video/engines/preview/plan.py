"""Planning shots: a plain data structure that says, frame by frame, what goes where.

`make_plan` turns the read prompt (`script.Script`), the references' shapes and the request
into shots with framings (close, two-shot, wide), per-character boxes with gentle motion, a
camera move, a caption of the beat's own words, and subtitle cues timed to the speech. Each
character keeps one side of the frame for the whole video (left to right in order of first
mention), so a cut never swaps who stands where. The renderer only follows the plan, and
tests read it to know where each reference must appear.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence

from .script import Beat, Script

__all__ = ["FPS", "Box", "Placement", "Shot", "Cue", "Plan", "RefShape", "make_plan"]

FPS = 30
_MIN_SHOT_FRAMES = FPS  # no shot shorter than a second
_LINE_GAP = 0.25  # seconds of breath before and between lines


@dataclasses.dataclass(frozen=True)
class RefShape:
    """What planning needs to know of a reference."""

    index: int
    kind: str  # "image" or "video"
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int


@dataclasses.dataclass(frozen=True)
class Placement:
    """A character drawn in `box` at the shot's first frame, drifting `drift` px per second."""

    character: int
    box: Box
    drift: tuple[float, float]

    def box_at(self, seconds: float) -> Box:
        dx, dy = self.drift
        return dataclasses.replace(self.box, x=round(self.box.x + dx * seconds), y=round(self.box.y + dy * seconds))


@dataclasses.dataclass(frozen=True)
class Shot:
    start: int  # first frame
    end: int  # one past the last frame
    framing: str  # "close", "two", "wide"
    characters: tuple[int, ...]
    placements: tuple[Placement, ...]
    pan: tuple[float, float]  # background pan in px per second
    beat: int | None  # the prompt beat this shot shows
    # What happens, in the prompt's words without its quotes (`Beat.action`): verbs the plan
    # cannot act out ("holding", "playing a song") are at least named on screen.
    caption: str = ""

    @property
    def frames(self) -> int:
        return self.end - self.start

    def box_of(self, character: int, frame: int) -> Box:
        """Where `character` is drawn at absolute frame `frame`."""
        placement = next(p for p in self.placements if p.character == character)
        return placement.box_at((frame - self.start) / FPS)


@dataclasses.dataclass(frozen=True)
class Cue:
    """A line of dialogue: spoken (when there is audio) and subtitled from start to end."""

    start: float
    end: float
    speaker: int | None
    text: str


@dataclasses.dataclass(frozen=True)
class Plan:
    width: int
    height: int
    fps: int
    frames: int
    shots: tuple[Shot, ...]
    cues: tuple[Cue, ...]
    scene: int | None
    seed: int

    @property
    def cuts(self) -> list[int]:
        """Frames where a new shot starts (none for a single shot)."""
        return [shot.start for shot in self.shots[1:]]

    def shot_at(self, frame: int) -> Shot:
        return next(s for s in self.shots if s.start <= frame < s.end)


def make_plan(
    script: Script,
    refs: Sequence[RefShape],
    *,
    width: int,
    height: int,
    duration: int,
    shot_type: str,
    seed: int,
    speech_seconds: Mapping[int, float] | None = None,
) -> Plan:
    """The plan for one request. `speech_seconds` maps a line's index in `script.lines` to
    the length of its synthesized speech; without it, lengths are estimated from the words."""
    rng = random.Random(seed)
    frames = duration * FPS
    shapes = {r.index: r for r in refs}
    subjects = [s for s in script.subjects if s in shapes] or [r.index for r in refs]
    if shot_type == "multi":
        groups = _multi_groups(script, subjects)
    else:
        groups = [(None, _cast(script.named, subjects) or subjects)]
    weights = [script.beats[b].weight if b is not None else 1.0 for b, _ in groups]
    spans = _share(frames, weights)
    # One left-to-right rank for the whole video: first mentioned stands leftmost.
    rank = {c: i for i, c in enumerate(dict.fromkeys([*_cast(script.named, subjects), *subjects]))}
    shots = []
    start = 0
    for (beat, cast), length in zip(groups, spans):
        caption = script.beats[beat].action if beat is not None else _summary(script)
        shots.append(_shot(start, start + length, beat, cast, shapes, width, height, rng, rank, caption))
        start += length
    cues = _cues(script, shots, frames / FPS, speech_seconds or {})
    return Plan(width, height, FPS, frames, tuple(shots), cues, script.scene, seed)


def _cast(characters: Sequence[int], subjects: Sequence[int]) -> list[int]:
    return [c for c in characters if c in subjects]


def _multi_groups(script: Script, subjects: list[int]) -> list[tuple[int | None, list[int]]]:
    """Two to four (beat, characters) groups cut on the prompt's beats."""
    groups: list[tuple[int | None, list[int]]] = []
    for i, beat in enumerate(script.beats):
        cast = _cast(_acting_first(beat), subjects)
        if cast:
            groups.append((i, cast))
    while len(groups) > 4:  # merge the lightest neighbouring pair
        pair = min(range(len(groups) - 1), key=lambda k: _weight(script, groups[k]) + _weight(script, groups[k + 1]))
        (b1, c1), (_, c2) = groups[pair], groups[pair + 1]
        groups[pair : pair + 2] = [(b1, list(dict.fromkeys(c1 + c2)))]
    if len(groups) < 2:
        # One beat or none: open on everybody, then go close on who the beat is about.
        focus = groups[0] if groups else (None, subjects[:1])
        groups = [(None, subjects), focus] if len(subjects) > 1 else [(None, subjects), (focus[0], subjects)]
    return groups


def _summary(script: Script) -> str:
    """The caption of a shot that shows no one beat: every beat's action, in order."""
    parts = [b.action for b in script.beats if b.action]
    # Clauses split on "then" or "," lost their joint: a semicolon keeps them apart.
    return " ".join(p if p[-1] in ".!?。！？;；" or i == len(parts) - 1 else f"{p};" for i, p in enumerate(parts))


def _acting_first(beat: Beat) -> list[int]:
    return list(dict.fromkeys([*beat.actors, *beat.characters]))


def _weight(script: Script, group: tuple[int | None, list[int]]) -> float:
    return script.beats[group[0]].weight if group[0] is not None else 1.0


def _share(frames: int, weights: Sequence[float]) -> list[int]:
    """Split `frames` by `weights`, every part at least a second, summing exactly."""
    n = len(weights)
    spare = frames - _MIN_SHOT_FRAMES * n
    if spare < 0:  # more shots than whole seconds: share evenly
        base = [frames // n] * n
    else:
        total = sum(weights)
        base = [_MIN_SHOT_FRAMES + int(spare * w / total) for w in weights]
    base[-1] += frames - sum(base)
    return base


def _shot(start: int, end: int, beat: int | None, cast: list[int], shapes: Mapping[int, RefShape],
          width: int, height: int, rng: random.Random, rank: Mapping[int, int], caption: str) -> Shot:
    cast = cast[:5]
    framing = {1: "close", 2: "two"}.get(len(cast), "wide")
    order = sorted(cast, key=lambda c: rank.get(c, len(rank) + c))  # the video's one order, never per shot
    slots = _slots(len(order), width, height, rng)
    # Neighbours drifting apart or together over a long shot must not pass each other: each
    # moves at most a fifth of a slot's width in the whole shot.
    sideways = min(0.02 * width, 0.2 * width / len(order) / ((end - start) / FPS))
    placements = []
    for character, (sx, sy, sw, sh) in zip(order, slots):
        shape = shapes[character]
        box = _fit(shape.width, shape.height, sx, sy, sw, sh)
        drift = (rng.uniform(-1.0, 1.0) * sideways, rng.uniform(-0.006, 0.006) * height)
        placements.append(Placement(character, box, drift))
    pan = (rng.choice((-1, 1)) * rng.uniform(0.01, 0.025) * width, 0.0)
    return Shot(start, end, framing, tuple(cast), tuple(placements), pan, beat, caption)


def _slots(n: int, width: int, height: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """Rectangles (x, y, w, h) that the characters are fitted into, by framing."""
    if n == 1:
        w, h = int(width * 0.7), int(height * 0.86)
        x = (width - w) // 2 + int(rng.uniform(-0.08, 0.08) * width)
        return [(x, int(height * 0.07), w, h)]
    fill = 0.8 if n == 2 else 0.62
    h = int(height * fill)
    w = int(width / n * 0.9)
    gap = (width - w * n) // (n + 1)
    y = height - h - int(height * 0.06)
    return [(gap + i * (w + gap), y - int(rng.uniform(0, 0.04) * height), w, h) for i in range(n)]


def _fit(rw: int, rh: int, x: int, y: int, w: int, h: int) -> Box:
    """The largest box of the reference's aspect inside (x, y, w, h), bottom-centred."""
    scale = min(w / rw, h / rh)
    bw, bh = max(2, int(rw * scale)), max(2, int(rh * scale))
    return Box(x + (w - bw) // 2, y + h - bh, bw, bh)


def _cues(script: Script, shots: Sequence[Shot], seconds: float, speech: Mapping[int, float]) -> tuple[Cue, ...]:
    """Each line in the shot of its beat (or in order, for a single shot), timed to its speech."""
    cues: list[Cue] = []
    clock = 0.0
    for i, line in enumerate(script.lines):
        shot = next((s for s in shots if s.beat == line.beat), None)
        opens = shot.start / FPS if shot is not None else 0.0
        begin = max(clock, opens) + _LINE_GAP
        length = speech.get(i) or max(1.2, 0.4 * len(line.text.split()) + 0.15 * len(_cjk(line.text)))
        if begin >= seconds - 0.3:
            break  # no time left to say it
        end = min(begin + length, seconds)
        cues.append(Cue(round(begin, 3), round(end, 3), line.speaker, line.text))
        clock = end
    return tuple(cues)


def _cjk(text: str) -> str:
    return "".join(ch for ch in text if "\u4e00" <= ch <= "\u9fff")
