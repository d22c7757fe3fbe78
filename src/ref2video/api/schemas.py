"""Shapes of bodies and answers, for the OpenAPI document.

Requests are checked by `ref2video.spec.parse_spec`, which gives the provider's error codes
and messages; these models describe the same contract for readers of /docs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["CreateBody", "TaskCreated", "TaskAnswer", "ErrorBody", "TaskList", "CancelAnswer"]


class InputBody(BaseModel):
    prompt: str = Field(description="at most 1500 characters; character1..5 name the references in order")
    negative_prompt: str | None = Field(None, description="at most 500 characters")
    reference_urls: list[str] = Field(
        min_length=1, max_length=5, description="http(s):// or oss:// URLs; at most 5 images and 3 videos"
    )


class ParametersBody(BaseModel):
    size: str = Field("1920*1080", description="exact W*H from the 720P or 1080P tier")
    duration: int = Field(5, ge=2, le=10)
    shot_type: Literal["single", "multi"] = "single"
    audio: bool = Field(True, description="wan2.6-r2v always has sound")
    watermark: bool = False
    seed: int | None = Field(None, ge=0, le=2147483647, description="random when absent")


class CreateBody(BaseModel):
    model: str = Field(examples=["wan2.6-r2v-flash"])
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
    size: str
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


class TaskList(BaseModel):
    request_id: str
    data: list[TaskListItem]
    total: int
    total_page: int
    page_no: int
    page_size: int
