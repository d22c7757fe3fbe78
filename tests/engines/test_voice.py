"""Speech for the preview engine, with the real eSpeak NG from the espeakng-loader wheel."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ref2video.engines.preview.voice import Speech, Voice, language_of, median_pitch, resample, voice_like, voices_for
from ref2video.errors import EngineError

MAN = Voice("en-us", "m3", gender=1, pitch=35, rate=170, pitch_range=50)
WOMAN = Voice("en-us", "f3", gender=2, pitch=65, rate=170, pitch_range=50)
LINE = "I will meet you by the river tomorrow morning."


@pytest.fixture(scope="module")
def speech() -> Speech:
    return Speech()


def fundamental(samples: np.ndarray, rate: int) -> float:
    """Median pitch in Hz of the loud 40 ms frames, from the autocorrelation peak in 60-400 Hz."""
    size = int(0.04 * rate)
    shortest, longest = rate // 400, rate // 60
    loudness = float(np.sqrt(np.mean(samples**2)))
    pitches = []
    for start in range(0, samples.size - size, size // 2):
        frame = samples[start : start + size] - samples[start : start + size].mean()
        if np.sqrt(np.mean(frame**2)) < loudness:
            continue
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        lag = shortest + int(np.argmax(corr[shortest:longest]))
        if corr[lag] > 0.5 * corr[0]:  # voiced: the frame repeats itself
            pitches.append(rate / lag)
    assert pitches, "no voiced frame found"
    return float(np.median(pitches))


def test_an_english_line_is_audible_speech_of_a_plausible_length(speech: Speech) -> None:
    samples = speech.say("Sounds good", MAN)

    assert speech.sample_rate == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 0.3 < samples.size / speech.sample_rate < 3.0
    assert 0.1 < np.abs(samples).max() <= 1.0
    assert np.sqrt(np.mean(samples**2)) > 0.02
    assert abs(samples[0]) > 1e-3 and abs(samples[-1]) > 1e-3  # silence trimmed at both ends


def test_the_same_text_and_voice_give_identical_samples(speech: Speech) -> None:
    first = speech.say(LINE, WOMAN)  # f3 breathes: noise that eSpeak seeds from the clock
    speech.say("Something else entirely, in another voice.", MAN)  # the library's state moves on
    second = int(time.time())
    while int(time.time()) == second:  # into the next second of time(NULL)
        time.sleep(0.02)

    assert np.array_equal(speech.say(LINE, WOMAN), first)


def test_a_man_and_a_woman_differ_in_pitch(speech: Speech) -> None:
    low = fundamental(speech.say(LINE, MAN), speech.sample_rate)
    high = fundamental(speech.say(LINE, WOMAN), speech.sample_rate)

    assert 60 < low < 160
    assert high > 1.4 * low


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_first_two_voices_of_a_cast_differ_in_pitch(speech: Speech, seed: int) -> None:
    first, second = voices_for(2, seed)
    pitches = sorted(fundamental(speech.say(LINE, v), speech.sample_rate) for v in (first, second))

    assert pitches[1] > 1.3 * pitches[0]


def test_a_chinese_line_is_spoken_in_mandarin(speech: Speech) -> None:
    line = "你好，很高兴见到你"
    language = language_of(line)
    samples = speech.say(line, voices_for(1, seed=5, language=language)[0])

    assert language == "cmn"
    assert 1.0 < samples.size / speech.sample_rate < 6.0
    assert np.sqrt(np.mean(samples**2)) > 0.02


@pytest.mark.parametrize(
    "text, language",
    [("Hello there", "en-us"), ("你好", "cmn"), ("他说: OK 好的好的", "cmn"), ("Meet Li 李 at noon", "en-us"),
     ("", "en-us")],
)
def test_language_of_picks_mandarin_for_mostly_han_text(text: str, language: str) -> None:
    assert language_of(text) == language


def test_voices_for_gives_distinct_voices_the_same_for_a_seed() -> None:
    cast = voices_for(5, seed=42)

    assert len(cast) == 5 and len(set(cast)) == 5
    assert len({(v.gender, v.variant) for v in cast}) == 5
    assert {v.gender for v in cast} == {1, 2}
    assert all(v.language == "en-us" for v in cast)
    assert voices_for(5, seed=42) == cast
    assert voices_for(5, seed=43) != cast
    assert all(v.language == "cmn" for v in voices_for(3, seed=42, language="cmn"))


def test_voices_for_stays_distinct_past_the_variants() -> None:
    cast = voices_for(40, seed=1)

    assert len(set(cast)) == 40
    assert voices_for(0, seed=1) == []
    with pytest.raises(ValueError, match="count"):
        voices_for(-1, seed=1)


def test_a_voice_checks_its_ranges() -> None:
    with pytest.raises(ValueError, match="pitch"):
        Voice("en-us", pitch=101)
    with pytest.raises(ValueError, match="gender"):
        Voice("en-us", gender=0)


def test_empty_text_gives_no_samples(speech: Speech) -> None:
    assert speech.say("", MAN).size == 0
    assert speech.say(" \x01\n ", MAN).size == 0


def test_a_voice_eSpeak_lacks_is_an_engine_error(speech: Speech) -> None:
    with pytest.raises(EngineError, match="variant"):
        speech.say("Hello", Voice("en-us", "no-such-variant"))
    with pytest.raises(EngineError, match="no voice"):
        speech.say("Hello", Voice("xx-nowhere", "m3"))


def test_a_library_that_cannot_load_is_an_internal_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import espeakng_loader  # type: ignore[import-untyped]

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak-ng.so")
    with pytest.raises(EngineError, match="libespeak-ng") as caught:
        Speech()

    assert caught.value.code == "InternalError"


def test_threads_speaking_at_once_get_the_same_samples_as_one_at_a_time(speech: Speech) -> None:
    jobs = list(zip(["Sounds good", LINE, "Where are you going?", "你好，很高兴见到你"], voices_for(4, seed=9)))
    jobs[3] = (jobs[3][0], Voice("cmn", jobs[3][1].variant, jobs[3][1].gender))
    alone = [speech.say(text, voice) for text, voice in jobs]
    start = threading.Barrier(len(jobs))

    def say(job: tuple[str, Voice]) -> np.ndarray:
        start.wait()
        return speech.say(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(say, jobs))

    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


@pytest.mark.parametrize("src, dst", [(22050, 48000), (48000, 22050), (16000, 48000)])
def test_resample_keeps_the_duration_and_a_sine_frequency(src: int, dst: int) -> None:
    seconds, hz = 1.5, 440.0
    sine = np.sin(2 * np.pi * hz * np.arange(int(seconds * src)) / src).astype(np.float32)

    out = resample(sine, src, dst)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    peak = float(np.argmax(spectrum)) * dst / out.size
    expected = np.sin(2 * np.pi * hz * np.arange(out.size) / dst)

    assert out.dtype == np.float32
    assert out.size == round(seconds * dst)
    assert abs(peak - hz) < 1.0
    assert np.abs(out - expected)[out.size // 10 : -out.size // 10].max() < 0.01  # no phase drift


def test_resample_to_the_same_rate_is_a_copy() -> None:
    samples = np.linspace(-1, 1, 100, dtype=np.float32)

    out = resample(samples, 22050, 22050)

    assert np.array_equal(out, samples) and out is not samples
    assert resample(np.zeros(0, np.float32), 22050, 48000).size == 0


def buzz(pitch: float, seconds: float = 1.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 8)) * 0.2).astype(np.float32)


def test_the_pitch_of_a_recording() -> None:
    assert abs(median_pitch(buzz(110), 16000) - 110) < 3  # type: ignore[operator]
    assert abs(median_pitch(buzz(240), 16000) - 240) < 6  # type: ignore[operator]
    assert median_pitch(np.zeros(16000, np.float32), 16000) is None
    rng = np.random.default_rng(1)
    assert median_pitch(rng.normal(0, 0.3, 32000).astype(np.float32), 16000) is None  # noise is not a voice


def test_a_voice_like_the_recording() -> None:
    base = Voice("en-us", "m3", gender=1, pitch=40)
    high = voice_like(buzz(240), 16000, base)
    assert high.gender == 2 and high.variant in ("f3", "f1", "anika", "f4", "belinda", "f2", "steph", "f5")
    low = voice_like(buzz(95), 16000, base)
    assert low.gender == 1 and low.variant == "m3" and low.pitch < 50
    assert voice_like(np.zeros(16000, np.float32), 16000, base) == base
