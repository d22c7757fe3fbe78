"""Speech for the preview engine: eSpeak NG, in-process, a distinct voice per character.

The `espeakng-loader` wheel ships libespeak-ng and its data, so speech needs nothing but PyPI:
no system espeak, no subprocess, nothing fetched at run time. The library is driven through
ctypes in synchronous mode, its samples collected by a callback.

    speech = Speech()
    narrator, hero = voices_for(2, seed=7, language=language_of(line))
    samples = speech.say(line, hero)  # float32 mono at speech.sample_rate
    track = resample(samples, speech.sample_rate, 48000)
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import math
import random
import sys
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

from ...errors import EngineError

__all__ = ["Voice", "Speech", "voices_for", "voice_like", "median_pitch", "language_of", "resample"]

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when done; the callback runs on our thread
_INITIALIZE_DONT_EXIT = 0x8000  # report bad data with a status instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_RAND_SEED = 1

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# libespeak-ng is one set of C globals per process: one caller at a time, whatever the instance.
_LOCK = threading.Lock()

# Variants from espeak-ng-data/voices/!v: the plainer human ones, so every pick sounds like a
# person (no robots, whispers or Klatt buzz). Listed by how much they differ from the first.
_MALE = ("m3", "m1", "m7", "m2", "robert", "m4", "m6", "max")
_FEMALE = ("f3", "f1", "anika", "f4", "belinda", "f2", "steph", "f5")
_PITCHES = {1: (30, 55), 2: (45, 70)}  # eSpeak's 0-100 pitch scale; keeps men and women apart
_SILENCE = 1e-3  # about -60 dBFS: eSpeak's pauses and echo tails are quieter than this


@dataclasses.dataclass(frozen=True)
class Voice:
    """One speaker: an eSpeak NG language and variant, and how high and how fast it speaks.

    >>> Voice("en-us", "f3", gender=2, pitch=60, rate=170, pitch_range=60).name
    'en-us+f3'
    """

    language: str = "en-us"  # an eSpeak NG voice name: "en-us", "cmn", ...
    variant: str = ""  # a file in espeak-ng-data/voices/!v; "" lets eSpeak pick one by gender
    gender: int = 1  # 1 male, 2 female
    pitch: int = 50  # 0-100, eSpeak's own scale; 50 is the variant's natural pitch
    rate: int = 175  # words per minute
    pitch_range: int = 50  # 0-100: how far the pitch moves; 0 is a monotone

    def __post_init__(self) -> None:
        for field, value, low, high in (
            ("gender", self.gender, 1, 2),
            ("pitch", self.pitch, 0, 100),
            ("rate", self.rate, 80, 450),
            ("pitch_range", self.pitch_range, 0, 100),
        ):
            if not low <= value <= high:
                raise ValueError(f"Voice.{field} must be {low}..{high}, got {value!r}")

    @property
    def name(self) -> str:
        """The name espeak_SetVoiceByName takes."""
        return f"{self.language}+{self.variant}" if self.variant else self.language


def voices_for(count: int, seed: int, language: str = "en-us") -> list[Voice]:
    """`count` clearly different voices, the same for the same seed.

    Genders alternate, so any two neighbours differ most; variants do not repeat until each
    gender's list is used up, and then come back at another pitch.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count!r}")
    rng = random.Random(f"ref2video.voice:{seed}")  # a str seed is stable across runs and versions
    pools = {1: rng.sample(_MALE, len(_MALE)), 2: rng.sample(_FEMALE, len(_FEMALE))}
    first = rng.choice((1, 2))
    voices: list[Voice] = []
    for i in range(count):
        gender = first if i % 2 == 0 else 3 - first
        lap, slot = divmod(i // 2, len(pools[gender]))
        low, high = _PITCHES[gender]
        pitch = rng.randint(low, high) + (20 if lap % 2 else 0) - 10 * lap  # a reused variant moves
        voices.append(Voice(
            language=language,
            variant=pools[gender][slot],
            gender=gender,
            pitch=min(100, max(0, pitch)),
            rate=rng.randint(150, 185),
            pitch_range=rng.randint(35, 75),
        ))
    return voices


# The fundamental frequency eSpeak's variants speak at with pitch 50, roughly, by gender.
_NATURAL_F0 = {1: 110.0, 2: 205.0}
_FEMALE_F0 = 165.0  # above this median pitch a recording is taken for a higher, female voice


def voice_like(recording: np.ndarray, rate: int, base: Voice) -> Voice:
    """`base` moved as near a recording's timbre as eSpeak can follow: the gender and pitch of
    its median fundamental frequency. A recording with no voiced sound leaves `base` as it is.

    The media form's `reference_voice` (and a video reference's own sound) gives a subject's
    voice; a storyboard cannot clone it, but it can speak at its height."""
    f0 = median_pitch(recording, rate)
    if f0 is None:
        return base
    gender = 2 if f0 >= _FEMALE_F0 else 1
    pitch = round(50 + 50 * math.log2(f0 / _NATURAL_F0[gender]))
    variant = base.variant if gender == base.gender else (_FEMALE if gender == 2 else _MALE)[0]
    return dataclasses.replace(base, gender=gender, variant=variant, pitch=min(100, max(0, pitch)))


def median_pitch(samples: np.ndarray, rate: int, low: float = 70.0, high: float = 400.0) -> float | None:
    """The median fundamental frequency (Hz) of the voiced 40 ms frames of a mono recording,
    by normalised autocorrelation; None when fewer than five frames are voiced."""
    x = np.asarray(samples, np.float32)
    if x.ndim != 1:
        raise ValueError(f"median_pitch takes mono samples, got shape {x.shape}")
    frame, shortest, longest = int(rate * 0.04), int(rate / high), int(rate / low)
    if x.size < frame + longest:
        return None
    loudness = float(np.sqrt(np.mean(x**2))) * 0.5
    found = []
    for start in range(0, x.size - frame - longest, frame // 2):
        window = x[start : start + frame + longest] - x[start : start + frame + longest].mean()
        energy = float(np.sqrt(np.mean(window[:frame] ** 2)))
        if energy < max(loudness, _SILENCE):
            continue
        spectrum = np.fft.rfft(window, 2 * window.size)
        corr = np.fft.irfft(spectrum * np.conj(spectrum))[: longest + 1]
        lag = shortest + int(np.argmax(corr[shortest : longest + 1]))
        if corr[lag] > 0.5 * corr[0]:
            found.append(rate / lag)
    return float(np.median(found)) if len(found) >= 5 else None


def language_of(text: str) -> str:
    """`"cmn"` (Mandarin) when most letters of `text` are Han characters, else `"en-us"`."""
    letters = [c for c in text if c.isalpha()]
    han = sum(1 for c in letters if unicodedata.name(c, "").startswith("CJK "))
    return _chinese() if han * 2 > len(letters) else "en-us"


class Speech:
    """Speaks lines with eSpeak NG. Thread-safe; the same text and voice give the same samples.

    >>> speech = Speech()  # raises EngineError if libespeak-ng cannot be loaded
    >>> samples = speech.say("Sounds good", Voice("en-us", "f3", gender=2))
    >>> seconds = len(samples) / speech.sample_rate
    """

    sample_rate: int

    def __init__(self) -> None:
        with _LOCK, _library() as (_, rate):
            self.sample_rate = rate

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """`text` spoken by `voice`: float32 mono in [-1, 1], without silence at either end."""
        text = _speakable(text)
        if not text:
            return np.zeros(0, np.float32)
        chunks: list[np.ndarray] = []

        def collect(wav: ctypes._Pointer[ctypes.c_short], count: int, events: int | None) -> int:
            if wav and count > 0:
                chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
            return 0  # 0 asks eSpeak to go on

        callback = _SynthCallback(collect)  # referenced until the library is unloaded
        data = text.encode() + b"\0"
        with _LOCK, _library() as (lib, _):
            lib.espeak_SetSynthCallback(callback)
            _set_voice(lib, voice)
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise EngineError(f"eSpeak NG could not speak {text[:40]!r} (status {status})")
            lib.espeak_Synchronize()
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return _trim(samples.astype(np.float32) / 32768)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """`samples` (mono) from `src_rate` to `dst_rate` Hz, band-limited, as float32.

    The FFT method: exact for content below both Nyquist frequencies. Zeros appended before
    the transform keep its wrap-around from smearing the end of the clip onto its start.
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate!r} -> {dst_rate!r}")
    x = np.asarray(samples, np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample takes mono samples, got shape {x.shape}")
    if src_rate == dst_rate or x.size == 0:
        return x.copy()
    out_len = round(x.size * dst_rate / src_rate)
    # Pad to a length that maps to a whole number of output samples, with room for the wrap,
    # and whose other factors are small: a large prime factor makes the FFT five times slower.
    step = src_rate // math.gcd(src_rate, dst_rate)
    padded = _smooth(-(-(x.size + max(256, x.size // 100)) // step)) * step
    n_out = padded * dst_rate // src_rate
    spectrum = np.fft.rfft(x, padded)
    keep = min(spectrum.size, n_out // 2 + 1)
    y = np.fft.irfft(spectrum[:keep], n_out) * (n_out / padded)
    return y[:out_len].astype(np.float32)


def _smooth(n: int) -> int:
    """The least number >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


@contextmanager
def _library() -> Iterator[tuple[ctypes.CDLL, int]]:
    """A freshly loaded, initialised libespeak-ng and its sample rate; unloaded afterwards.

    The caller holds _LOCK. A fresh copy each time is what makes speech repeatable: the library
    keeps synthesis state in C statics that espeak_Initialize does not reset (the pitch flutter
    phase, the gain control, the glottal cycle count), so a reused copy says the same line a
    little differently every time. Loading and initialising costs a few milliseconds.
    """
    lib_path, data_path = _files()
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as exc:
        raise EngineError(f"cannot load libespeak-ng from {lib_path}: {exc}", code="InternalError") from exc
    try:
        _declare(lib)
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EngineError(f"eSpeak NG did not start with the data in {data_path} (status {rate})")
        lib.espeak_ng_SetRandSeed(_RAND_SEED)  # initialising seeds breath noise from the clock
        try:
            yield lib, rate
        finally:
            lib.espeak_Terminate()
    finally:
        _unload(lib)


def _files() -> tuple[str, str]:
    """The wheel's shared library and data folder."""
    try:
        import espeakng_loader

        return str(espeakng_loader.get_library_path()), str(espeakng_loader.get_data_path())
    except (ImportError, RuntimeError) as exc:
        raise EngineError(
            f"speech needs the espeakng-loader package and its eSpeak NG data ({exc})", code="InternalError"
        ) from exc


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceSpec)]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p,
    ]


def _unload(lib: ctypes.CDLL) -> None:
    if sys.platform == "win32":
        _ctypes.FreeLibrary(lib._handle)
    else:
        _ctypes.dlclose(lib._handle)


class _VoiceSpec(ctypes.Structure):
    """espeak_VOICE, for espeak_SetVoiceByProperties."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _set_voice(lib: ctypes.CDLL, voice: Voice) -> None:
    if voice.variant:
        # eSpeak quietly ignores an unknown variant; a typo should not pass as a voice.
        if not (Path(_files()[1]) / "voices" / "!v" / voice.variant).is_file():
            raise EngineError(f"eSpeak NG has no voice variant {voice.variant!r}")
        status = lib.espeak_SetVoiceByName(voice.name.encode())
    else:
        spec = _VoiceSpec(languages=voice.language.encode(), gender=voice.gender)
        status = lib.espeak_SetVoiceByProperties(ctypes.byref(spec))
    if status != 0:
        raise EngineError(f"eSpeak NG has no voice {voice.name!r} (status {status})")
    for parameter, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.pitch_range)):
        lib.espeak_SetParameter(parameter, value, 0)


@cache
def _chinese() -> str:
    """Mandarin if the wheel's data has it, else Cantonese, else English."""
    try:
        lang = Path(_files()[1]) / "lang"
    except EngineError:
        return "cmn"  # Speech will say what is missing
    for name in ("cmn", "yue"):
        if any(lang.glob(f"*/{name}")):
            return name
    return "en-us"


def _speakable(text: str) -> str:
    # Control characters could reach eSpeak's embedded commands; format characters mean nothing spoken.
    return "".join(" " if unicodedata.category(c).startswith("C") else c for c in text).strip()


def _trim(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > _SILENCE)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]
