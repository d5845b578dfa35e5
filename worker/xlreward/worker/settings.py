"""Annotation settings: flags, else ``XLREWARD_*`` environment variables, else the method's defaults
(METHOD.md: n = 10 samples, temperature 0.9, top_p 1.0, top_k off, 2400 new tokens, seed 42)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DIRECTIVE = (
    "Please answer the following instruction using only {language}, unless explicitly instructed to "
    "respond in a different language.\n\n"
)
DEFAULT_LANGUAGE_NAMES = {
    "en": "English",
    "es": "Spanish",
    "ru": "Russian",
    "de": "German",
    "fr": "French",
    "bn": "Bengali",
    "sw": "Swahili",
    "th": "Thai",
    "zh": "Chinese",
    "ja": "Japanese",
    "ar": "Arabic",
    "it": "Italian",
    "pt": "Portuguese",
    "ko": "Korean",
}
RewardMode = Literal["cross_lingual", "monolingual"]


class WorkerSettings(BaseSettings):
    """Where the work goes and how it is done. ``broker_url`` unset means embedded (in-process) runs."""

    model_config = SettingsConfigDict(env_prefix="XLREWARD_", extra="ignore", allow_inf_nan=False)

    broker_url: str | None = Field(default=None, description="Redis URL of the Celery broker and store")
    service_url: str = "http://127.0.0.1:8000"
    service_api_key: str | None = None
    service_retries: int = Field(default=8, ge=0, description="client retries on 429/503/connection errors")
    # Long, because a healthy unit may run for many minutes; a dead worker's unit is re-sent much sooner
    # by the waiting run, when the unit's lease lapses (xlreward.worker.leases).
    visibility_timeout_s: int = Field(
        default=3600, ge=1, description="seconds before the broker redelivers an unacknowledged task"
    )
    broker_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="how long a waiting run (annotate/best-of-n --wait, the loop) rides out an unreachable "
        "broker before it gives up, saying how to resume",
    )
    task_retries: int = Field(default=20, ge=0, description="Celery retries after the client gives up")
    # Off by default, like Celery's -E. Cheap when on: a few small messages per task, which Redis drops
    # unless a monitor (Flower, `celery events`) is listening.
    events: bool = Field(
        default=False,
        description="send task events (sent, received, started, succeeded, failed) for Flower and "
        "`celery events`",
    )

    # The method's settings (METHOD.md, steps 2-3).
    samples: int = Field(default=10, ge=2)
    temperature: float = Field(default=0.9, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = None
    max_tokens: int = Field(default=2400, ge=1)
    seed: int = 42
    reward_mode: RewardMode = "cross_lingual"
    directive: str = DEFAULT_DIRECTIVE
    language_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LANGUAGE_NAMES))

    @field_validator("directive")
    @classmethod
    def _has_language_slot(cls, value: str) -> str:
        if "{language}" not in value:
            raise ValueError('the directive must contain "{language}", where the language name goes')
        return value
