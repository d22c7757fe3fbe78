"""The create body's rules (docs/protocol.md §2-3), checked without a server."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ref2video.errors import InvalidParameter, InvalidURL, ModelNotFound
from ref2video.spec import TaskSpec, parse_spec, reference_kind

MODELS = ("wan2.6-r2v", "wan2.6-r2v-flash")
SEED_BODY: dict[str, Any] = {
    "model": "wan2.6-r2v-flash",
    "input": {
        "prompt": "Character2 sits in a chair by the window holding character3."
                  " Character1 says to Character2: 'Sounds good'.",
        "reference_urls": [
            "https://help-static-aliyun-doc.aliyuncs.com/file-manage-files/zh-CN/20260129/hfugmr/wan-r2v-role1.mp4",
            "https://help-static-aliyun-doc.aliyuncs.com/file-manage-files/zh-CN/20260129/qigswt/wan-r2v-role2.mp4",
            "https://help-static-aliyun-doc.aliyuncs.com/file-manage-files/zh-CN/20260129/qpzxps/wan-r2v-object4.png",
            "https://help-static-aliyun-doc.aliyuncs.com/file-manage-files/zh-CN/20260129/wfjikw/wan-r2v-backgroud5.png",
        ],
    },
    "parameters": {"size": "1280*720", "duration": 10, "audio": True, "shot_type": "multi"},
}


def body_with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_BODY)
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return body


_DELETE = object()


def test_the_seed_documents_body_is_accepted() -> None:
    spec = parse_spec(SEED_BODY, MODELS)
    assert spec.model == "wan2.6-r2v-flash"
    assert spec.size == "1280*720" and (spec.width, spec.height) == (1280, 720)
    assert spec.duration == 10 and spec.shot_type == "multi" and spec.audio is True
    assert len(spec.reference_urls) == 4
    assert 0 <= spec.seed <= 2147483647


def test_defaults() -> None:
    spec = parse_spec(body_with("parameters", _DELETE), MODELS)
    assert (spec.size, spec.duration, spec.shot_type, spec.audio, spec.watermark) == (
        "1920*1080", 5, "single", True, False,
    )


def test_unknown_keys_are_ignored_and_the_sdk_extend_prompt_is_accepted() -> None:
    body = body_with("input.extend_prompt", True)
    body["parameters"]["prompt_extend"] = True
    body["whatever"] = {"x": 1}
    assert parse_spec(body, MODELS).prompt == SEED_BODY["input"]["prompt"]


def test_long_prompts_are_truncated() -> None:
    spec = parse_spec(body_with("input.prompt", "a" * 2000), MODELS)
    assert len(spec.prompt) == 1500
    spec = parse_spec(body_with("input.negative_prompt", "b" * 700), MODELS)
    assert spec.negative_prompt == "b" * 500


def test_audio_false_is_kept_on_flash_and_ignored_on_wan26() -> None:
    assert parse_spec(body_with("parameters.audio", False), MODELS).audio is False
    body = body_with("parameters.audio", False)
    body["model"] = "wan2.6-r2v"
    assert parse_spec(body, MODELS).audio is True


def test_a_given_seed_is_kept() -> None:
    assert parse_spec(body_with("parameters.seed", 42), MODELS).seed == 42
    assert parse_spec(body_with("parameters.seed", 2147483647), MODELS).seed == 2147483647


def test_deprecated_reference_video_urls_is_accepted_for_videos() -> None:
    body = body_with("input.reference_urls", _DELETE)
    body["input"]["reference_video_urls"] = ["https://x.test/a.mp4"]
    assert parse_spec(body, MODELS).reference_urls == ("https://x.test/a.mp4",)


@pytest.mark.parametrize(
    ("path", "value", "error", "words"),
    [
        ("model", _DELETE, InvalidParameter, "model is required"),
        ("model", 5, InvalidParameter, "model must be a string"),
        ("model", "wan9", ModelNotFound, "wan9"),
        ("input", _DELETE, InvalidParameter, "input is required"),
        ("input", "text", InvalidParameter, "input must be an object"),
        ("input.prompt", _DELETE, InvalidParameter, "input.prompt is required"),
        ("input.prompt", "   ", InvalidParameter, "input.prompt must not be empty"),
        ("input.prompt", ["a"], InvalidParameter, "input.prompt must be a string, not array"),
        ("input.negative_prompt", 3, InvalidParameter, "input.negative_prompt must be a string"),
        ("input.reference_urls", _DELETE, InvalidParameter, "input.reference_urls is required"),
        ("input.reference_urls", [], InvalidParameter, "1 to 5"),
        ("input.reference_urls", "https://x.test/a.png", InvalidParameter, "array"),
        ("input.reference_urls", ["https://x.test/a.png"] * 6, InvalidParameter, "not 6"),
        ("input.reference_urls", [f"https://x.test/{i}.mp4" for i in range(4)], InvalidParameter, "at most 3"),
        ("input.reference_urls", [7], InvalidParameter, "input.reference_urls[0]"),
        ("input.reference_urls", ["ftp://x.test/a.png"], InvalidURL, "reference 1"),
        ("input.reference_urls", ["https://x.test/a.png", "file:///etc/passwd"], InvalidURL, "reference 2"),
        ("input.reference_urls", ["http:///nohost.png"], InvalidURL, "no host"),
        ("input.reference_urls", ["oss://"], InvalidURL, "oss://"),
        ("parameters", [1], InvalidParameter, "parameters must be an object"),
        ("parameters.size", "1280x720", InvalidParameter, "parameters.size '1280x720' is not supported"),
        ("parameters.size", "640*480", InvalidParameter, "parameters.size"),
        ("parameters.size", 1280, InvalidParameter, "parameters.size must be a string"),
        ("parameters.duration", 1, InvalidParameter, "between 2 and 10, not 1"),
        ("parameters.duration", 11, InvalidParameter, "between 2 and 10, not 11"),
        ("parameters.duration", "5", InvalidParameter, "parameters.duration must be an integer, not string"),
        ("parameters.duration", 5.5, InvalidParameter, "parameters.duration must be an integer"),
        ("parameters.duration", True, InvalidParameter, "not boolean"),
        ("parameters.shot_type", "many", InvalidParameter, "'single' or 'multi'"),
        ("parameters.audio", "yes", InvalidParameter, "parameters.audio must be a boolean"),
        ("parameters.audio", 1, InvalidParameter, "parameters.audio must be a boolean"),
        ("parameters.watermark", "no", InvalidParameter, "parameters.watermark must be a boolean"),
        ("parameters.seed", -1, InvalidParameter, "parameters.seed must be between 0 and 2147483647"),
        ("parameters.seed", 2147483648, InvalidParameter, "parameters.seed"),
        ("parameters.seed", "7", InvalidParameter, "parameters.seed must be an integer"),
    ],
)
def test_each_rule_is_enforced_with_a_message_naming_the_field(path: str, value: Any, error: type, words: str) -> None:
    with pytest.raises(error) as caught:
        parse_spec(body_with(path, value), MODELS)
    assert words in caught.value.message


def test_the_body_must_be_an_object() -> None:
    with pytest.raises(InvalidParameter, match="JSON object"):
        parse_spec([SEED_BODY], MODELS)


def test_integral_floats_are_integers() -> None:
    assert parse_spec(body_with("parameters.duration", 6.0), MODELS).duration == 6


def test_reference_kind_reads_the_path_only() -> None:
    assert reference_kind("https://x.test/a/B.PNG?x=1.mp4") == "image"
    assert reference_kind("https://x.test/clip.mov") == "video"
    assert reference_kind("https://x.test/blob") is None


MEDIA = ("wan2.7-r2v",)


def media_spec(prompt: str, *types: str, **parameters: Any):  # type: ignore[no-untyped-def]
    media = [{"type": kind, "url": f"https://x.test/{i}.{'mp4' if 'video' in kind else 'png'}"}
             for i, kind in enumerate(types)]
    return parse_spec({"model": "wan2.7-r2v", "input": {"prompt": prompt, "media": media},
                       "parameters": parameters}, MEDIA)


def test_the_media_form_defaults_as_the_provider() -> None:
    spec = media_spec("Image 1 waves", "reference_image")
    assert (spec.form, spec.resolution, spec.ratio, spec.size) == ("media", "1080P", "16:9", "1920*1080")
    assert spec.duration == 5 and spec.audio is True and spec.prompt_extend is True
    assert media_spec("x", "reference_image", resolution="720P", ratio="4:3").size == "1104*832"


def test_the_media_forms_names_become_character_numbers() -> None:
    """Images and videos are counted apart (Image 1, Video 1); characterN counts them all."""
    spec = media_spec("Video 1 hands image 2 to 图1, then 视频2 and 图片 2 bow", "reference_image",
                      "reference_video", "first_frame", "reference_image", "reference_video")
    assert spec.reference_urls == ("https://x.test/0.png", "https://x.test/1.mp4", "https://x.test/3.png",
                                   "https://x.test/4.mp4")
    assert spec.first_frame == "https://x.test/2.png"
    assert spec.prompt_with_character_names() == (
        "character2 hands character3 to character1, then character4 and character3 bow")
    assert spec.prompt.startswith("Video 1")  # what the task keeps and answers as orig_prompt
    lone = media_spec("参考视频 dances; Image 3 is not there", "reference_video")
    assert lone.prompt_with_character_names() == "character1 dances; Image 3 is not there"


def test_a_first_frame_sets_the_ratio() -> None:
    spec = media_spec("Image 1", "reference_image", resolution="720P", ratio="16:9")
    assert spec.fitted_to(360, 640).ratio == "9:16" and spec.fitted_to(360, 640).size == "720*1280"
    assert spec.fitted_to(1000, 760).ratio == "4:3" and spec.fitted_to(500, 500).size == "960*960"


def test_shots_come_from_the_prompt_in_the_media_form() -> None:
    assert media_spec("镜头1 [0-3s]: 图1 走来", "reference_image").shot_type == "multi"
    assert media_spec("Shot 1: Image 1 waves. Shot 2: it bows", "reference_image").shot_type == "multi"
    assert media_spec("Image 1 waves", "reference_image", shot_type="multi").shot_type == "single"


def test_a_media_spec_survives_the_table() -> None:
    spec = media_spec("Image 1", "reference_image", "first_frame")
    assert TaskSpec.from_json(spec.to_json()) == spec
