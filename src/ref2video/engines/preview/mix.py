"""The soundtrack: each line spoken by its character's voice, video references' own sound as
their characters' ambience, mixed to stereo 48 kHz and trimmed to the video."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ...media.reference import Reference
from .plan import Plan
from .script import Line
from .voice import Speech, Voice, language_of, resample, voice_like, voices_for

__all__ = ["RATE", "speak_lines", "mix"]

RATE = 48000
_AMBIENCE_GAIN = 0.25  # about -12 dB under the voices
_PEAK = 0.89  # about -1 dBFS


VOICE_RATE = 16000  # enough to tell how high a recording speaks


def speak_lines(lines: Sequence[Line], characters: int, seed: int, speech: Speech,
                recordings: Mapping[int, np.ndarray] | None = None) -> list[np.ndarray]:
    """Each line's speech at 48 kHz mono, in a voice that belongs to its speaker; a speaker
    with a recording of their voice (mono, VOICE_RATE) speaks at its height (`voice_like`)."""
    casts: dict[str, list[Voice]] = {}
    out = []
    for line in lines:
        language = language_of(line.text)
        if language not in casts:
            cast = voices_for(characters + 1, seed, language)
            for character, recording in (recordings or {}).items():
                if 0 < character < len(cast):
                    cast[character] = voice_like(recording, VOICE_RATE, cast[character])
            casts[language] = cast
        cast = casts[language]
        voice = cast[(line.speaker or 0) % len(cast)]  # the narrator (no speaker) is voice 0
        out.append(resample(speech.say(line.text, voice), speech.sample_rate, RATE))
    return out


def mix(plan: Plan, spoken: Sequence[np.ndarray], refs: Mapping[int, Reference],
        voiced: Collection[int] = ()) -> np.ndarray:
    """The stereo track, exactly as long as the video. Video references' own sound plays under
    their shots, but not for the characters in `voiced`: a voice given for them replaces it."""
    total = plan.frames * RATE // plan.fps
    track = np.zeros((2, total), np.float32)
    for shot in plan.shots:
        for character in shot.characters:
            ref = refs.get(character) if character not in voiced else None
            sound = ref.audio(RATE) if ref is not None and ref.has_audio else None
            if sound is not None and sound.shape[1]:
                start, end = shot.start * RATE // plan.fps, shot.end * RATE // plan.fps
                _add(track, _loop(_stereo(sound), end - start) * _AMBIENCE_GAIN, start, pan=0.0)
    for cue, samples in zip(plan.cues, spoken):
        start = int(cue.start * RATE)
        length = int((cue.end - cue.start) * RATE)
        pan = 0.0 if cue.speaker is None else ((cue.speaker - 1) % 5 - 2) * 0.15
        _add(track, np.vstack([samples[:length], samples[:length]]), start, pan)
    peak = float(np.abs(track).max()) if track.size else 0.0
    if peak > _PEAK:
        track *= _PEAK / peak
    return track


def _stereo(sound: np.ndarray) -> np.ndarray:
    return np.vstack([sound[0], sound[0]]) if sound.shape[0] == 1 else sound[:2]


def _loop(sound: np.ndarray, length: int) -> np.ndarray:
    reps = -(-length // sound.shape[1])
    return np.tile(sound, (1, reps))[:, :length]


def _add(track: np.ndarray, sound: np.ndarray, start: int, pan: float) -> None:
    """Mix `sound` into `track` from sample `start`, panned (-1 left .. 1 right), clipped to the track."""
    end = min(track.shape[1], start + sound.shape[1])
    if end <= start:
        return
    gains = np.array([[min(1.0, 1.0 - pan)], [min(1.0, 1.0 + pan)]], np.float32)
    track[:, start:end] += sound[:, : end - start] * gains
