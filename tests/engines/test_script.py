"""Reading prompts: mentions, beats, dialogue with speakers, and the scene."""

from __future__ import annotations

import pytest

from ref2video.engines.preview.script import read_prompt

SEED_PROMPT = ("Character2 sits in a chair by the window holding character3, playing a soothing American country "
               "song next to character4. Character1 says to Character2: 'Sounds good'.")


def test_the_seed_prompt() -> None:
    script = read_prompt(SEED_PROMPT, 4)
    assert [b.characters for b in script.beats] == [(2, 3, 4), (1, 2)]
    assert script.beats[0].actors == (2,)
    (line,) = script.lines
    assert (line.text, line.speaker, line.listener, line.beat) == ("Sounds good", 1, 2, 1)
    assert script.scene == 4  # "next to character4", and nobody does anything as character4
    assert script.subjects == (1, 2, 3)


@pytest.mark.parametrize("mention", ["character1", "Character1", "CHARACTER1", "Character 1", "角色1"])
def test_mentions_in_any_spelling(mention: str) -> None:
    assert read_prompt(f"{mention} waves.", 2).named == (1,)


def test_mentions_past_the_references_are_ignored() -> None:
    assert read_prompt("character1 greets character7 and character12.", 2).named == (1,)


@pytest.mark.parametrize(
    ("prompt", "text", "speaker", "listener"),
    [
        ("Character1 says to Character2: 'Sounds good'.", "Sounds good", 1, 2),
        ('character2 asks character1: "Ready?"', "Ready?", 2, 1),
        ("character1 says “Let's go, now.”", "Let's go, now.", 1, None),
        ("‘I don't know,’ replies character2 to character1.", "I don't know,", 2, None),
        ("角色1对角色2说：「走吧」", "走吧", 1, 2),
        ("character2: “你好”", "你好", 2, None),
        ("Character1 whispers 'don't tell character2'.", "don't tell character2", 1, None),
    ],
)
def test_dialogue_and_its_speaker(prompt: str, text: str, speaker: int, listener: int | None) -> None:
    (line,) = read_prompt(prompt, 2).lines
    assert (line.text, line.speaker, line.listener) == (text, speaker, listener)


def test_apostrophes_are_not_quotes() -> None:
    script = read_prompt("character1 doesn't smile. character2's dog runs.", 2)
    assert script.lines == ()
    assert [b.characters for b in script.beats] == [(1,), (2,)]


def test_punctuation_inside_quotes_does_not_split_beats() -> None:
    script = read_prompt("character1 says: 'Stop. Wait! Really?' Then character2 laughs.", 2)
    assert [b.characters for b in script.beats] == [(1,), (2,)]
    assert script.lines[0].text == "Stop. Wait! Really?"


def test_clauses_become_beats() -> None:
    script = read_prompt("character1 opens the door, then character2 walks in; character3 waves.", 3)
    assert [b.characters for b in script.beats] == [(1,), (2,), (3,)]


def test_joint_subjects_both_act() -> None:
    assert read_prompt("character1 and character2 dance in character3.", 3).beats[0].actors == (1, 2)


def test_places_become_the_scene_and_actors_never_do() -> None:
    assert read_prompt("character1 walks into character2.", 2).scene == 2
    assert read_prompt("character1 stands in front of character2.", 2).scene == 2
    # character2 acts, so it is a subject even though something happens "at" it later.
    assert read_prompt("character2 sings. character1 dances at character2.", 2).scene is None


def test_an_unnamed_reference_is_the_scene_only_when_it_looks_like_one() -> None:
    assert read_prompt("character1 dances.", 2, scene_hints={2: True}).scene == 2
    assert read_prompt("character1 dances.", 2, scene_hints={2: False}).scene is None
    assert read_prompt("someone dances.", 1, scene_hints={1: True}).scene is None  # never the only one


@pytest.mark.parametrize("prompt", [
    "character1 waves at character2",  # the README's first example
    "character1 looks at character2 and smiles.",
    "character1 points at the character2.",
    "character1 smiles towards character2.",
])
def test_a_gesture_aimed_at_someone_is_no_place(prompt: str) -> None:
    script = read_prompt(prompt, 2)
    assert script.scene is None and script.subjects == (1, 2)


def test_a_cut_out_figure_is_never_the_scene() -> None:
    assert read_prompt("character1 walks into character2.", 2, cutouts=[2]).scene is None
    assert read_prompt("character1 dances.", 2, scene_hints={2: True}, cutouts=[2]).scene is None
    assert read_prompt("character1 walks into character2.", 2, cutouts=[1]).scene == 2
