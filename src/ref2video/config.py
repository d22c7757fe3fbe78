"""Settings, from the environment (`REF2VIDEO_*`) and an optional TOML file.

Precedence, highest first: keyword arguments, environment variables, the TOML file named by
`REF2VIDEO_CONFIG` (or `ref2video serve --config`), then the defaults below. Every setting is
documented in docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import json
from decimal import Decimal
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .protocol import DEFAULT_MODELS

__all__ = ["Settings", "BUILTIN_ENGINES", "DASHSCOPE"]

# List and table settings read from the environment as JSON or in a plain form:
# REF2VIDEO_FETCH_ALLOW=127.0.0.0/8,10.0.0.0/8 and REF2VIDEO_MODELS=wan2.6-r2v=dashscope,...
StrList = Annotated[list[str], NoDecode]
StrTable = Annotated[dict[str, str], NoDecode]
IntTable = Annotated[dict[str, Annotated[int, Field(ge=1)]], NoDecode]
PriceTable = Annotated[dict[str, Annotated[Decimal, Field(ge=0)]], NoDecode]

# The provider's list prices, in CNY per billed second (China mainland): `model:tier`, and
# `model:tier:silent` where a task without sound costs less. docs/billing.md.
LIST_PRICES: dict[str, Decimal] = {
    **{f"{model}:{tier}": Decimal(price) for model in ("wan2.6-r2v", "wan2.7-r2v")
       for tier, price in (("720P", "0.6"), ("1080P", "1.0"))},
    "wan2.6-r2v-flash:720P": Decimal("0.3"), "wan2.6-r2v-flash:1080P": Decimal("0.5"),
    "wan2.6-r2v-flash:720P:silent": Decimal("0.15"), "wan2.6-r2v-flash:1080P:silent": Decimal("0.25"),
}

_config_file: ContextVar[str | None] = ContextVar("ref2video_config_file", default=None)

# The engine name of the DashScope relay, which needs provider keys (`dashscope_api_keys`).
DASHSCOPE = "dashscope"

# Engine names and the import strings they stand for; `engines` adds to or overrides these.
BUILTIN_ENGINES: dict[str, str] = {
    "preview": "ref2video.engines.preview.engine:PreviewEngine",
    DASHSCOPE: "ref2video.engines.dashscope:DashscopeEngine",
    "wan": "ref2video.engines.wan:WanEngine",
}


class Settings(BaseSettings):
    """Everything an operator can set. See docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="REF2VIDEO_", extra="forbid")

    data_dir: Path = Field(Path("ref2video-data"), description="where the database, results and scratch files live")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at data_dir/ref2video.db")
    results_dir: Path | None = Field(None, description="local result storage; default data_dir/results")
    # Object storage: results and uploads in an S3-compatible bucket (docs/deploy.md).
    storage: Literal["local", "s3"] = Field("local", description="where results and uploads live: local or s3")
    s3_bucket: str = Field("", description="the bucket of storage = s3")
    s3_endpoint_url: str = Field("", description="the S3 API's URL; empty: AWS")
    s3_region: str = Field("us-east-1", description="the bucket's region")
    s3_access_key_id: str = Field("", description="empty: boto3's own credential chain")
    s3_secret_access_key: str = Field("", description="empty: boto3's own credential chain")
    s3_prefix: str = Field("", description="folder of the bucket that holds results/ and uploads/")
    s3_private: bool = Field(False, description="serve videos through the API, not by presigned bucket links")
    s3_connect_timeout: float = Field(5.0, gt=0, description="seconds to connect to the bucket, per try")
    s3_read_timeout: float = Field(30.0, gt=0, description="seconds the bucket may go silent, per try")
    s3_max_attempts: int = Field(3, ge=1, description="tries of one call to the bucket")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = Field("", description="base of video_url links; default: the URL the client used")

    workers: int = Field(
        1, ge=0, description="0 runs the API only; else the tasks run at once by an engine that declares no capacity"
    )
    engine_capacity: IntTable = Field(
        default_factory=dict, description="engine name -> tasks one process runs at once with it (its own default)"
    )
    worker_models: StrList = Field(
        default_factory=list, description="the models whose tasks this process runs; empty: all of them"
    )
    lease_seconds: float = Field(30.0, gt=0, description="a claim lapses if not renewed for this long")
    max_attempts: int = Field(3, ge=1, description="claims of one task before it fails")
    reap_interval: float = Field(5.0, gt=0, description="seconds between checks for lapsed leases")
    poll_interval: float = Field(5.0, gt=0, description="fallback wake-up when no notification can arrive")
    shutdown_grace: float = Field(10.0, ge=0, description="seconds running tasks get to finish on shutdown")

    retention_hours: float = Field(24.0, gt=0, description="tasks and their files are removed after this")

    billing: bool = Field(False, description="hold, charge and release credits for every task; owners need accounts")
    prices: PriceTable = Field(
        default_factory=dict, description="credits per billed second by model:tier[:silent], over the list prices"
    )
    # Rate limits and quotas (docs/limits.md); 0 turns each off.
    rate_create_per_second: float = Field(0.0, ge=0, description="creates one key may make a second; 0: no limit")
    rate_create_burst: int = Field(0, ge=0, description="creates one key may make at once; 0: the rate, rounded up")
    rate_query_per_second: float = Field(
        0.0, ge=0, description="queries (a task, the list, a cancel) one key may make a second; 0: no limit"
    )
    rate_query_burst: int = Field(0, ge=0, description="queries one key may make at once; 0: the rate, rounded up")
    max_unfinished_tasks: int = Field(0, ge=0, description="PENDING or RUNNING tasks one owner may have; 0: no limit")
    rate_limit_lease: float = Field(
        0.05, ge=0, le=1,
        description="seconds of a key's rate a process takes from the shared bucket at once (PostgreSQL)",
    )
    sweep_interval: float = Field(300.0, gt=0, description="seconds between retention sweeps")
    orphan_grace_seconds: float = Field(
        3600.0, gt=0, description="age after which a stored file no task or upload names is removed"
    )
    url_ttl_seconds: int = Field(86400, gt=0, description="lifetime of a signed video_url")
    signing_secret: str = Field(
        "", description="HMAC secret for video URLs; default: generated once and kept in the database")

    max_body_bytes: int = Field(1 << 20, gt=0, description="largest accepted request body")
    http_max_connections: int | None = Field(
        None, ge=1, description="client connections open at once; default: what the descriptor limit leaves"
    )
    http_header_timeout: float = Field(15.0, gt=0, description="seconds a request's headers may take to arrive")
    http_body_timeout: float = Field(30.0, gt=0, description="seconds a request body may go without a byte")
    http_keepalive_timeout: float = Field(5.0, gt=0, description="seconds an idle kept-alive connection stays open")

    fetch_allow: StrList = Field(
        default_factory=list, description="CIDR ranges reference fetching may reach despite being private"
    )
    fetch_connect_timeout: float = Field(10.0, gt=0, description="seconds to connect to a reference's host")
    fetch_timeout: float = Field(120.0, gt=0, description="seconds one reference download may take in all")
    fetch_max_redirects: int = Field(5, ge=0, description="redirects followed per reference")
    cache_max_bytes: int = Field(2 << 30, ge=0, description="size of the reference cache; 0 turns it off")
    # Webhooks (docs/webhooks.md); their addresses are checked like references' (fetch_allow).
    webhook_sender: bool = Field(True, description="this process delivers webhooks (leases keep processes apart)")
    webhook_timeout: float = Field(10.0, gt=0, description="seconds one webhook attempt may take in all")
    webhook_concurrency: int = Field(16, ge=1, description="webhook attempts in flight at once per process")
    webhook_poll_interval: float = Field(1.0, gt=0, description="seconds between looks for due webhooks")
    webhook_backoff_seconds: float = Field(5.0, gt=0, description="wait after a webhook's first failure; doubles")
    webhook_backoff_max_seconds: float = Field(3600.0, gt=0, description="longest wait between two webhook attempts")
    webhook_retry_hours: float = Field(24.0, gt=0, description="a webhook is retried this long, then given up")
    timezone: str = Field(
        "Asia/Shanghai",
        description="zone of the times in task answers and of the list's start_time/end_time;"
        " the provider's is Beijing time",
    )

    models: StrTable = Field(
        default_factory=lambda: dict.fromkeys(DEFAULT_MODELS, "preview"),
        description="model name -> engine name or 'module:Class' import string",
    )
    engines: StrTable = Field(default_factory=dict, description="extra engine names -> import strings")
    preview_badge: bool = Field(
        True, description="the preview engine marks every frame with a small 'PREVIEW · storyboard' badge"
    )
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or one JSON object a line (with request_id and task_id)"
    )
    log_requests: bool = Field(
        False, description="one info line per HTTP request (method, route, status, duration, request_id)"
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="port on host where `ref2video worker` serves Prometheus /metrics; default: none",
    )

    # The open-weights engine "wan" (docs/engines.md): a Wan VACE model folder in diffusers layout.
    wan_model_dir: Path | None = Field(None, description="the wan engine's model folder (diffusers layout, local)")
    wan_device: str = Field("cuda:0", pattern=r"^(cpu|cuda(:\d+)?)$", description="where the wan engine runs")
    wan_dtype: str = Field(
        "auto", pattern=r"^(auto|bfloat16|float16|float32)$",
        description="weights' type; auto: bfloat16 on CUDA, float32 on the CPU (the VAE stays float32)",
    )
    wan_steps: int = Field(30, ge=1, description="denoising steps per segment (without a step-distillation LoRA)")
    wan_guidance: float = Field(5.0, ge=1.0, description="classifier-free guidance scale (1 turns it off)")
    wan_area: str = Field(
        "", pattern=r"^(\d+\*\d+)?$",
        description="generation area W*H before resizing to the request; default: the model's trained area",
    )
    wan_segment_frames: int = Field(
        81, ge=9, description="most frames (at 16 fps) one pass makes; longer videos continue in segments"
    )
    wan_cpu_offload: bool = Field(False, description="keep idle model parts in CPU memory (less GPU memory, slower)")
    wan_lora: Path | None = Field(None, description="a step-distillation LoRA file (lightx2v, CausVid) to load")
    wan_lora_steps: int = Field(4, ge=1, description="denoising steps with wan_lora")
    wan_lora_guidance: float = Field(1.0, ge=1.0, description="guidance scale with wan_lora")
    wan_attention: str = Field("", description="diffusers attention backend (sage, flash, ...); empty: default")
    wan_first_block_cache: float = Field(
        0.0, ge=0.0, lt=1.0, description="first-block cache threshold (e.g. 0.05); 0 turns it off"
    )

    # The DashScope relay: models mapped to the engine "dashscope" go to the provider.
    dashscope_base_url: str = Field(
        "https://dashscope.aliyuncs.com/api/v1", description="the provider region's API base URL"
    )
    dashscope_api_keys: StrList = Field(default_factory=list, description="provider API keys, one per account")
    dashscope_models: StrTable = Field(
        default_factory=dict, description="our model name -> the provider's; default: the same name"
    )
    dashscope_query_rate: float = Field(20.0, gt=0, description="task queries, lists and cancels per second per key")
    dashscope_submit_rate: float = Field(5.0, gt=0, description="submits and upload certificates per second per key")
    dashscope_timeout: float = Field(30.0, gt=0, description="seconds one call to the provider may take")
    dashscope_retry_budget: int = Field(
        40, ge=1, description="failed calls in a row about one task before it fails"
    )
    dashscope_max_in_flight: int = Field(20000, ge=1, description="relayed tasks one process holds at once")
    dashscope_max_result_bytes: int = Field(1 << 30, gt=0, description="largest result video downloaded")
    dashscope_timezone: str = Field("Asia/Shanghai", description="zone the provider reads task-list times in")

    @field_validator("fetch_allow", "dashscope_api_keys", "worker_models", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        """JSON (`["a", "b"]`) or comma-separated (`a,b`)."""
        if not isinstance(value, str):
            return value
        if value.strip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator("models", "engines", "dashscope_models", "engine_capacity", "prices", mode="before")
    @classmethod
    def _table(cls, value: Any) -> Any:
        """JSON (`{"a": "b"}`) or comma-separated pairs (`a=b,c=d`)."""
        if not isinstance(value, str):
            return value
        if value.strip().startswith("{"):
            return json.loads(value)
        table = {}
        for pair in filter(None, (item.strip() for item in value.split(","))):
            name, sep, target = pair.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(f"{pair!r} is not name=value; write pairs as a=b,c=d or give a JSON object")
            table[name.strip()] = target.strip()
        return table

    @field_validator("fetch_allow")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address range like 127.0.0.0/8") from None
        return value

    @field_validator("timezone", "dashscope_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name like Asia/Shanghai or UTC") from None
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # In TOML a setting written below the [models] table becomes a model: say so.
        if misplaced := sorted(set(self.models) & set(type(self).model_fields)):
            raise ValueError(f"models names {', '.join(misplaced)}, which are settings: in a TOML file, "
                             "write settings above the [models] table")
        if self.relay_models and not [k for k in self.dashscope_api_keys if k.strip()]:
            relayed = ", ".join(sorted(self.relay_models))
            raise ValueError(f"models {relayed} are served by the dashscope engine, which needs dashscope_api_keys")
        if unknown := [m for m in self.worker_models if m not in self.models]:
            raise ValueError(f"worker_models names {', '.join(unknown)}, which are not among the models "
                             f"({', '.join(self.models)})")
        if self.storage == "s3" and not self.s3_bucket.strip():
            raise ValueError("storage = 's3' needs s3_bucket")
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'ref2video.db'}"
        if self.results_dir is None:
            self.results_dir = self.data_dir / "results"
        # The orphan sweep removes files in results_dir that no task names: sharing a folder
        # with the database or another store would delete their files.
        shared = [self.data_dir, self.data_dir / "uploads", self.scratch_dir, self.cache_dir]
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            pass  # make_engine reports it
        else:
            if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
                shared.append(Path(url.database).parent)
        if self.results_dir.resolve() in {path.resolve() for path in shared}:
            raise ValueError(f"results_dir {str(self.results_dir)!r} must be a folder of its own, not one that holds "
                             "the database, uploads, scratch or cache files:"
                             " files in it that no task names are removed")
        return self

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def relay_models(self) -> dict[str, str]:
        """Our model names served by the DashScope relay -> the provider's model names."""
        return {model: self.dashscope_models.get(model, model)
                for model, engine in self.models.items() if engine == DASHSCOPE}

    def engine_target(self, model: str) -> str:
        """The import string of the engine serving `model`."""
        name = self.models[model]
        table = {**BUILTIN_ENGINES, **self.engines}
        return table.get(name, name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _config_file.get() or os.environ.get("REF2VIDEO_CONFIG")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings from the environment, `config_file` (if given) and `overrides`."""
        if config_file is None:
            return cls(**overrides)
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        token = _config_file.set(str(path))
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)
