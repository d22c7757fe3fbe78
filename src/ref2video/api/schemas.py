"""Shapes of bodies and answers, for the OpenAPI document.

Requests are checked by `ref2video.spec.parse_spec`, which gives the provider's error codes
and messages; these models describe the same contract for readers of /docs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..app.keys import MAX_BURST, MAX_RATE
from ..app.ledger import MAX_CREDITS

__all__ = ["CreateBody", "TaskCreated", "TaskAnswer", "ErrorBody", "TaskList", "CancelAnswer", "Health",
           "Unhealthy", "CertificateAnswer", "UploadAnswer", "AccountCreate", "AccountCredit", "AccountLimits",
           "KeyCreate", "KeyLimits", "WebhookCreate"]


class MediaItemBody(BaseModel):
    type: Literal["reference_image", "reference_video", "first_frame"]
    url: str = Field(description="http(s):// or oss://")
    reference_voice: str | None = Field(
        None, description="WAV or MP3, 1 to 10 s: the voice of this reference's subject (not on a first_frame)"
    )


class InputBody(BaseModel):
    prompt: str = Field(
        description="wan2.6: at most 1500 characters, character1..5 name reference_urls in order; "
        "wan2.7: at most 5000, Image 1 / Video 1 (图1 / 视频1) name the media items, counted apart"
    )
    negative_prompt: str | None = Field(None, description="at most 500 characters")
    reference_urls: list[str] | None = Field(
        None, min_length=1, max_length=5,
        description="the urls form (wan2.6): http(s):// or oss:// URLs; at most 5 images and 3 videos",
    )
    media: list[MediaItemBody] | None = Field(
        None, min_length=1, max_length=6,
        description="the media form (wan2.7): 1 to 5 references and at most one first_frame; never with reference_urls",
    )


class ParametersBody(BaseModel):
    size: str | None = Field(
        None, description="the urls form: exact W*H from the 720P or 1080P tier; default 1920*1080")
    resolution: Literal["720P", "1080P"] | None = Field(None, description="the media form; default 1080P")
    ratio: Literal["16:9", "9:16", "1:1", "4:3", "3:4"] | None = Field(None, description="the media form; default 16:9")
    duration: int = Field(5, ge=2, le=15, description="2 to 10 s; the media form without a reference video: to 15")
    shot_type: Literal["single", "multi"] = Field("single", description="the urls form")
    audio: bool = Field(True, description="the urls form; wan2.6-r2v and the media form always have sound")
    prompt_extend: bool = Field(True, description="the media form")
    watermark: bool = False
    seed: int | None = Field(None, ge=0, le=2147483647, description="random when absent")


class CreateBody(BaseModel):
    model: str = Field(examples=["wan2.6-r2v-flash", "wan2.7-r2v"])
    input: InputBody
    parameters: ParametersBody = ParametersBody()


class CreatedOutput(BaseModel):
    task_id: str
    task_status: Literal["PENDING"]


class TaskCreated(BaseModel):
    request_id: str
    output: CreatedOutput


class TaskOutput(BaseModel):
    task_id: str
    task_status: Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    orig_prompt: str | None = None
    video_url: str | None = None
    code: str | None = None
    message: str | None = None
    progress: int | None = None
    queue_position: int | None = None
    seed: int | None = None
    engine: str | None = None


class Usage(BaseModel):
    duration: int
    input_video_duration: int
    output_video_duration: int
    video_count: int
    SR: int
    size: str | None = Field(None, description="the urls form")
    ratio: str | None = Field(None, description="the media form")
    audio: bool | None = None


class TaskAnswer(BaseModel):
    request_id: str
    output: TaskOutput
    usage: Usage | None = None


class ErrorBody(BaseModel):
    request_id: str
    code: str
    message: str


class CancelAnswer(BaseModel):
    request_id: str


class TaskListItem(BaseModel):
    task_id: str
    status: str
    model_name: str
    gmt_create: int
    start_time: int | None
    end_time: int | None
    prompt: str | None = Field(None, description="ref2video's extension: the task's prompt")


class TaskList(BaseModel):
    request_id: str
    data: list[TaskListItem]
    total: int
    total_page: int
    page_no: int
    page_size: int


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    workers: int
    running: int


class Unhealthy(BaseModel):
    status: Literal["unavailable"]
    database: Literal["unreachable", "not writable"]


class Certificate(BaseModel):
    policy: str
    signature: str
    upload_dir: str
    upload_host: str
    expire_in_seconds: int
    max_file_size_mb: int
    capacity_limit_mb: int
    oss_access_key_id: str
    x_oss_object_acl: str
    x_oss_forbid_overwrite: str


class CertificateAnswer(BaseModel):
    """The provider's shape: the certificate under `data`."""

    request_id: str
    data: Certificate


class Uploaded(BaseModel):
    url: str = Field(description="oss://<key>, a reference for this key's owner")
    key: str
    size: int


class UploadAnswer(BaseModel):
    request_id: str
    output: Uploaded


# -- the admin API's bodies (routes/admin.py reads them itself, to the same rules) -------------

# An amount of credits: a decimal string ("12.5") or a number.
Amount = float | str
_AMOUNT = f"credits, as a decimal string (\"12.5\") or a number; at most {MAX_CREDITS} either way"
_LIMIT = _AMOUNT + "; null: no limit"


def _owner() -> Any:
    return Field(min_length=1, max_length=64, description="the owner's name: 1 to 64 printable characters")


class AccountCreate(BaseModel):
    owner: str = _owner()
    credit: Amount = Field("0", description="the opening balance, not negative: " + _AMOUNT)
    daily_limit: Amount | None = Field(None, description="spend a day: " + _LIMIT)
    monthly_limit: Amount | None = Field(None, description="spend a month: " + _LIMIT)


class AccountCredit(BaseModel):
    amount: Amount = Field(description="not zero; negative adjusts down: " + _AMOUNT)
    note: str | None = Field(None, max_length=500, description="shown in the statement")


class AccountLimits(BaseModel):
    """Only the limits given change."""

    daily_limit: Amount | None = Field(None, description=_LIMIT)
    monthly_limit: Amount | None = Field(None, description=_LIMIT)


class KeyLimits(BaseModel):
    """A key's own rate limits (docs/limits.md); null: the server's setting."""

    model_config = ConfigDict(extra="forbid")  # any other field is refused

    rate_create_per_second: float | None = Field(None, ge=0, le=MAX_RATE, description="0: no limit for this key")
    rate_create_burst: int | None = Field(None, ge=0, le=MAX_BURST, description="0: the rate rounded up")
    rate_query_per_second: float | None = Field(None, ge=0, le=MAX_RATE, description="0: no limit for this key")
    rate_query_burst: int | None = Field(None, ge=0, le=MAX_BURST, description="0: the rate rounded up")


class KeyCreate(BaseModel):
    owner: str = _owner()
    name: str = Field("", max_length=128)
    role: Literal["user", "admin"] = "user"
    rate_create_per_second: float | None = Field(None, ge=0, le=MAX_RATE)
    rate_create_burst: int | None = Field(None, ge=0, le=MAX_BURST)
    rate_query_per_second: float | None = Field(None, ge=0, le=MAX_RATE)
    rate_query_burst: int | None = Field(None, ge=0, le=MAX_BURST)


class WebhookCreate(BaseModel):
    owner: str = _owner()
    url: str = Field(max_length=2048, description="an absolute http(s) URL without credentials")
    events: list[str] | None = Field(None, description="some of the task events, or [\"*\"]; null: all")
