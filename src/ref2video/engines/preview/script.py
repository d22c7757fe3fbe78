"""Reading the prompt: who is named, in which beats, who says what, and what is the scene.

The preview engine has no language model, so this is deliberately plain pattern work over the
prompt's own words: `character1`..`character5` (any case, `Character 1` too, and `角色1`),
sentences and clauses as beats, quoted lines (straight, curly, 「」 and “” quotes) with the
speaker taken from the words around the quote.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection

__all__ = ["Line", "Beat", "Script", "read_prompt"]

_MENTION = re.compile(r"(?:\bcharacter\s*|角色\s*)(\d+)", re.IGNORECASE)
_QUOTES = [
    re.compile(r"“(.+?)”"),
    re.compile(r"「(.+?)」"),
    re.compile(r"『(.+?)』"),
    re.compile(r"‘(.+?)’"),
    re.compile(r'"(.+?)"'),
    re.compile(r"(?<![\w'])'(.+?)'(?!\w)"),  # not an apostrophe: no letter outside the quotes
]
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*|\n+")
_CLAUSE_BREAK = re.compile(r",\s*(?:and\s+)?then\s+|;\s*|，\s*然后|\bthen\b|\bwhile\b|，", re.IGNORECASE)
_SPEECH_VERB = re.compile(
    r"\b(?:says?|said|asks?|asked|repl(?:y|ies|ied)|tells?|told|shouts?|whispers?|answers?|sings?|"
    r"calls?|yells?|exclaims?|responds?|adds?|murmurs?)\b|说|问|回答|喊|道",
    re.IGNORECASE,
)
_LISTENER = re.compile(r"(?:\bto\s+|对\s*|跟\s*|向\s*)$", re.IGNORECASE)
_PLACE = re.compile(
    r"(?:\b(?:in|into|inside|at|on|onto|near|beside|by|behind|against|across|through|within|"
    r"next\s+to|in\s+front\s+of|on\s+top\s+of|around|over|under)\s+(?:the\s+)?|在|于)$",
    re.IGNORECASE,
)
# "waves at character2", "looks at the character2": a gesture aimed at someone, not a place.
_AIMED = re.compile(
    r"\b(?:look|wave|smile|point|stare|glance|laugh|nod|wink|grin|frown|gaze|peer|shout|yell|bark|"
    r"growl|sneer|scowl|beam|giggle|chuckle|cheer|hiss|snarl|squint|whistle|aim|lunge|snap|roar|"
    r"swing|throw|toss)(?:s|es|ed|d|ing)?\s+(?:over\s+)?(?:at|towards?)\s+(?:the\s+)?$",
    re.IGNORECASE,
)
_PLACEHOLDER = "\u2063{}\u2063"  # stands in for a quote while sentences are split


@dataclasses.dataclass(frozen=True)
class Line:
    """A quoted line of dialogue."""

    text: str
    speaker: int | None  # character number, or None when nobody can be told
    listener: int | None
    beat: int


@dataclasses.dataclass(frozen=True)
class Beat:
    """A sentence or clause of the prompt: one candidate shot."""

    text: str
    characters: tuple[int, ...]  # in order of first mention
    actors: tuple[int, ...]  # those that act here: subjects and speakers
    lines: tuple[Line, ...]

    @property
    def weight(self) -> float:
        """How much screen time the beat asks for: its words, plus time for its lines."""
        words = len(re.findall(r"\w+", _strip_quotes(self.text))) + len(re.findall(r"[\u4e00-\u9fff]", self.text)) / 2
        spoken = sum(max(1.2, 0.4 * len(line.text.split())) for line in self.lines)
        return max(1.0, words / 3 + spoken)

    @property
    def action(self) -> str:
        """The beat's words without its quoted lines (they are subtitles): what happens, as the
        prompt put it, for the shot's caption. Empty when the beat is nothing but a quote."""
        text = self.text
        for line in self.lines:
            text = text.replace(f"'{line.text}'", "\0", 1)
        # "says to Character2: 'Hi'." -> "says to Character2.": no colon or comma left dangling;
        # "'Hi?' Character2 replies" -> "; Character2 replies": a new clause stays apart.
        text = re.sub(r"[\s:：,，]*\0[\s:：,，]*(?=[A-Z]|角色)", "; ", text)
        text = re.sub(r"[\s:：,，]*\0[\s:：,，]*", " ", text)
        text = re.sub(r"\s+(?=[.!?。！？;；])", "", text)
        text = re.sub(r"\s+", " ", text).strip(" ,，:：;；")
        return text if re.search(r"\w", text) else ""


@dataclasses.dataclass(frozen=True)
class Script:
    beats: tuple[Beat, ...]
    lines: tuple[Line, ...]
    named: tuple[int, ...]  # every character the prompt names, in order of first mention
    scene: int | None  # the reference that serves as the background, if any
    subjects: tuple[int, ...]  # the references drawn as characters


def read_prompt(prompt: str, references: int, scene_hints: dict[int, bool] | None = None,
                cutouts: Collection[int] = ()) -> Script:
    """Read `prompt` against `references` references (numbered 1..references).

    `scene_hints` may mark references that look like places (for example, landscape images
    that no clause names as acting); the prompt's own words decide first. `cutouts` are
    references that cannot be a place whatever the words (a figure cut out on transparency).
    """
    quotes: list[str] = []
    masked = _mask_quotes(prompt, quotes)
    beats: list[Beat] = []
    for text in _beats_of(masked):
        beats.append(_beat(text, len(beats), quotes, references))
    lines = tuple(line for beat in beats for line in beat.lines)
    named = _unique(c for beat in beats for c in beat.characters)
    scene = _scene(beats, masked, references, scene_hints or {}, frozenset(cutouts))
    subjects = tuple(i for i in range(1, references + 1) if i != scene)
    return Script(tuple(beats), lines, named, scene, subjects)


def _mask_quotes(prompt: str, quotes: list[str]) -> str:
    """Replace each quote by a placeholder, so punctuation inside it splits nothing."""
    for pattern in _QUOTES:
        def keep(match: re.Match[str]) -> str:
            quotes.append(match.group(1).strip())
            return _PLACEHOLDER.format(len(quotes) - 1)

        prompt = pattern.sub(keep, prompt)
    return prompt


def _beats_of(masked: str) -> list[str]:
    sentences = [s.strip() for s in _SENTENCE_END.split(masked) if s and s.strip()]
    beats: list[str] = []
    for sentence in sentences:
        parts = [p.strip(" ,，") for p in _CLAUSE_BREAK.split(sentence) if p and p.strip(" ,，")]
        # A clause that names nobody and says nothing belongs to the one before it.
        for part in parts:
            if beats and not _MENTION.search(part) and "\u2063" not in part and part is not parts[0]:
                beats[-1] = f"{beats[-1]}, {part}"
            else:
                beats.append(part)
    return beats or [masked.strip()]


def _beat(text: str, index: int, quotes: list[str], references: int) -> Beat:
    mentions = [(m.start(), int(m.group(1))) for m in _MENTION.finditer(text) if 1 <= int(m.group(1)) <= references]
    characters = _unique(c for _, c in mentions)
    lines = []
    for match in re.finditer("\u2063(\\d+)\u2063", text):
        speaker, listener = _attribution(text, match.start(), match.end(), mentions)
        lines.append(Line(quotes[int(match.group(1))], speaker, listener, index))
    actors = _unique([*(line.speaker for line in lines if line.speaker), *_subjects(text, mentions)])
    shown = re.sub("\u2063(\\d+)\u2063", lambda m: f"'{quotes[int(m.group(1))]}'", text)
    return Beat(shown, characters, actors, tuple(lines))


def _attribution(text: str, start: int, end: int, mentions: list[tuple[int, int]]) -> tuple[int | None, int | None]:
    """Speaker and listener of the quote at text[start:end]."""
    before = [(pos, c) for pos, c in mentions if pos < start]
    after = [(pos, c) for pos, c in mentions if pos >= end]
    # "character1 says to character2: '...'": the mention right before a speech verb speaks.
    for pos, c in reversed(before):
        if _LISTENER.search(text[:pos]):
            continue  # "to character2", "对角色2": spoken to, not speaking
        if _SPEECH_VERB.search(text[pos:start]):
            listener = next((c2 for p2, c2 in before if pos < p2 < start), None)
            return c, listener
    # "'...', says character2" or "'...' character2 replies".
    for pos, c in after:
        if _SPEECH_VERB.search(text[end:pos + 20]):
            return c, None
    if before:  # "character1: '...'"
        return before[-1][1], None
    return (after[0][1] if after else None), None


def _subjects(text: str, mentions: list[tuple[int, int]]) -> list[int]:
    """Characters in subject position: first in the clause, or right after 'and' with it."""
    out: list[int] = []
    for pos, c in mentions:
        lead = _strip_quotes(text[:pos]).strip().lower()
        if not lead or (out and re.fullmatch(r".*\b(and|和|与)$", lead) and len(lead) < 40 + len(out) * 20):
            out.append(c)
        elif not out:
            break
    return out


def _scene(beats: list[Beat], masked: str, references: int, hints: dict[int, bool],
           cutouts: frozenset[int]) -> int | None:
    """The reference that is a place: named only after a place word (not after a gesture aimed
    at someone), or never named and hinted; never a cut-out figure."""
    actors = {c for beat in beats for c in beat.actors} | cutouts
    placed: list[int] = []
    for match in _MENTION.finditer(masked):
        c = int(match.group(1))
        before = masked[: match.start()].rstrip() + " "
        if 1 <= c <= references and c not in actors and _PLACE.search(before) and not _AIMED.search(before):
            placed.append(c)
    if placed:
        return placed[-1]
    named = {c for beat in beats for c in beat.characters}
    unnamed = [i for i in range(1, references + 1) if i not in named and i not in cutouts and hints.get(i)]
    if unnamed and references > 1:
        return unnamed[-1]
    return None


def _strip_quotes(text: str) -> str:
    return re.sub("\u2063\\d+\u2063|'[^']*'", " ", text)


def _unique(items) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return tuple(dict.fromkeys(i for i in items if i is not None))
