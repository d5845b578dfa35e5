"""Reward-server settings: command-line flags, else ``XLREWARD_*`` environment variables, else defaults.

Validated where they are built, each message saying how to fix it. Build one per app
(``create_app(settings)``), never at import time, so tests can run several servers side by side.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from xlreward.service.choices import DEVICE_PATTERN, DeviceMapName, DeviceName, DtypeName
from xlreward.service.model_source import check_model_available, check_model_name
from xlreward.service.models_config import ModelSpec, load_models_file, single_pair

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_visible_secret(key: str) -> bool:
    """A bearer key a client can send: not empty and no whitespace (an empty key would match the header
    'Authorization: Bearer' with nothing after it)."""
    return bool(key) and not any(character.isspace() for character in key)


class ServiceSettings(BaseSettings):
    """Every setting has an environment variable: the field name in upper case after ``XLREWARD_``
    (``XLREWARD_MAX_BATCH_TOKENS=32768``). ``api_keys`` is JSON: ``XLREWARD_API_KEYS='{"key": "team"}'``."""

    model_config = SettingsConfigDict(
        env_prefix="XLREWARD_", extra="forbid", validate_default=True, allow_inf_nan=False
    )

    _specs: list[ModelSpec] = PrivateAttr(default_factory=list)

    # Models: one implicit pair (named "default"), or a models file
    policy: str | None = Field(default=None, description="the DPO (policy) checkpoint: hub id or folder")
    reference: str | None = Field(default=None, description="the reference checkpoint: hub id or folder")
    models: Path | None = Field(
        default=None, description="a TOML file of named reward models (instead of --policy/--reference)"
    )
    revision: str | None = Field(default=None, description="hub revision of --policy and --reference")
    trust_remote_code: bool = Field(default=False, description="run model code from the checkpoints")
    attn_implementation: str | None = Field(
        default=None, description="transformers' attention implementation (sdpa, eager, flash_attention_2)"
    )
    model_name: str | None = Field(default=None, description="reported generation model name")
    device: DeviceName = Field(default="auto", description="where models run")
    reference_device: str | None = Field(
        default=None,
        pattern=DEVICE_PATTERN,
        description="the reference's device, to split a pair over two GPUs (cuda:1); unset: --device",
    )
    device_map: DeviceMapName | None = Field(
        default=None, description="spread each model over the GPUs (for a model larger than one)"
    )
    dtype: DtypeName = Field(
        default="auto", description="model weights' dtype; auto = bfloat16 on GPU, float32 on CPU"
    )
    beta: float = Field(default=0.1, ge=0, description="default reward scale; a request may override it")
    raw: bool = Field(default=False, description="no chat template (base models)")
    system_prompt: str | None = None
    icr_compat: bool = False

    # Network and tenants
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: dict[str, str] = Field(default_factory=dict, description="API key -> tenant name")
    admin_key: str | None = Field(default=None, description="bearer key of /admin (model switches)")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="largest request body; a longer one is refused with 413 before it is read whole",
    )

    # Batching
    chunk_size: int | None = Field(
        default=None, ge=1, description="LM-head rows per log-softmax block; unset: sized from the vocabulary"
    )
    max_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="padded tokens per forward batch; unset: the engine's device default (4096 on CPU, "
        "16384 on GPU)",
    )
    max_forward_tokens: int | None = Field(
        default=None,
        ge=1,
        description="positions one forward call runs; a wider batch of single items runs in chunks on its "
        "KV cache (same scores), and waiting requests of less-served tenants run between chunks; unset: 256 "
        "on CPU, no cap on GPU",
    )
    packed: bool = Field(
        default=False,
        description="score in packed rows with no padding, each group's prompt once per row; checked "
        "against the plain forward at start-up, and refused for a model that does not pack exactly",
    )
    batch_wait_ms: float = Field(default=5.0, ge=0, description="how long a batch waits to fill up")
    max_queue_items: int = Field(default=4096, ge=1, description="queued items before 429")
    max_items_per_request: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0)

    # Generation
    generation_backend: Literal["local", "openai"] = "local"
    upstream_url: str | None = Field(default=None, description="OpenAI-compatible server for generation")
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    default_max_tokens: int = Field(default=256, ge=1, description="for OpenAI requests without max_tokens")
    generation_timeout_s: float = Field(
        default=1800.0, gt=0, description="a generation request's deadline (sampling runs for minutes)"
    )
    generation_turn_ms: float = Field(
        default=50.0,
        gt=0,
        description="built-in sampling runs in turns of about this long (plus one step), and scoring "
        "batches run between turns: the longest a scoring request waits behind a generation",
    )

    @field_validator("policy", "reference", mode="before")
    @classmethod
    def _path_as_name(cls, value: object) -> object:
        return str(value) if isinstance(value, Path) else value

    @field_validator("policy", "reference")
    @classmethod
    def _names_a_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:  # a missing folder fails here, before anything loads
                check_model_name(value, what=f"--{info.field_name}")
            except FileNotFoundError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_secrets(cls, keys: dict[str, str]) -> dict[str, str]:
        for key, tenant in keys.items():
            if not is_visible_secret(key):
                raise ValueError(
                    f"the key of tenant {tenant!r} is empty or holds spaces, so a bare 'Authorization: "
                    "Bearer' would match it: give every tenant a key of visible characters"
                )
            if not tenant.strip():
                raise ValueError("every API key needs a tenant name: the metrics and fair share go by it")
        return keys

    @field_validator("admin_key")
    @classmethod
    def _admin_key_is_a_secret(cls, key: str | None) -> str | None:
        if key is not None and not is_visible_secret(key):
            raise ValueError("the admin key is empty or holds spaces: give a key of visible characters")
        return key

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> Self:
        pair = self.policy is not None or self.reference is not None
        if self.models is not None and pair:
            raise ValueError("give either --models FILE or --policy and --reference, not both")
        if self.models is None and (self.policy is None or self.reference is None):
            raise ValueError(
                "no models: give --policy and --reference (XLREWARD_POLICY, XLREWARD_REFERENCE), or "
                "--models FILE (XLREWARD_MODELS)"
            )
        if self.models is not None:  # read once, here: a bad file fails naming the file
            self._specs = load_models_file(self.models)
        else:
            assert self.policy is not None and self.reference is not None
            self._specs = [single_pair(self.policy, self.reference, self.revision)]
        for spec in self._specs:  # offline, a hub id missing from the cache fails here, not after start-up
            for role, source in spec.sources.items():
                what = f"--{role}" if self.models is None else f"model {spec.name!r}: {role}"
                try:
                    check_model_available(
                        source, revision=spec.revision, what=what, trust_remote_code=self.trust_remote_code
                    )
                except FileNotFoundError as error:
                    raise ValueError(str(error)) from None
        return self

    def model_specs(self) -> list[ModelSpec]:
        """The served models in order; the first is the default."""
        return list(self._specs)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.batch_wait_ms >= self.request_timeout_s * 1000:
            raise ValueError(
                f"batch_wait_ms ({self.batch_wait_ms}) must be below request_timeout_s "
                f"({self.request_timeout_s} s): a batch may not wait longer than a request may live"
            )
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError(
                f"max_items_per_request ({self.max_items_per_request}) must not exceed max_queue_items "
                f"({self.max_queue_items}): a request that big could never be queued"
            )
        if self.device_map and self.reference_device:
            raise ValueError(
                "device_map places each model itself; drop reference_device (or device_map to split a pair "
                "over two devices)"
            )
        if self.generation_backend == "openai" and not self.upstream_url:
            raise ValueError(
                "generation_backend is 'openai' but upstream_url is not set: set XLREWARD_UPSTREAM_URL to "
                "the OpenAI-compatible server (for example http://vllm:8000)"
            )
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines but no API keys are set: set "
                'XLREWARD_API_KEYS=\'{"<key>": "<tenant>"}\' to serve beyond loopback, or bind to 127.0.0.1'
            )
        return self
