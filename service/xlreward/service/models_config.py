"""Which reward models a server holds: ``xlreward serve --models models.toml``, or the single-pair flags as
the shorthand for one implicit model named ``default``. Torch-free, validated where it is read.

```toml
[[models]]
name = "icr-en"                 # what requests name ("model": "icr-en"); the first entry is the default
kind = "implicit"               # policy + reference; the policy may be a LoRA adapter over the reference
policy = "org/llama3-sft-dpo"   # hub id or folder
reference = "org/llama3-sft"
revision = "main"               # optional; also dtype, beta, packed and the placement:
device = "cuda:0"               #   the whole model (a pair: both models) on one device,
reference_device = "cuda:1"     #   the reference on another (an implicit pair over two GPUs),
# device_map = "auto"           #   or each model spread over the GPUs (larger than one GPU)
[[models]]
name = "rm-en"
kind = "classifier"             # a sequence-classification model with a one-logit head
path = "org/llama3-rm"
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xlreward.service.choices import DEVICE_PATTERN, DeviceMapName, DtypeName

DEFAULT_MODEL_NAME = "default"


class ModelSpec(BaseModel):
    """One served reward model. ``dtype``/``device``/``reference_device``/``device_map``/``beta``/``packed``
    left unset take the server's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    kind: Literal["implicit", "classifier"] = "implicit"
    policy: str | None = Field(default=None, description="implicit: the DPO policy (hub id or folder)")
    reference: str | None = Field(default=None, description="implicit: the reference (hub id or folder)")
    path: str | None = Field(default=None, description="classifier: the reward model (hub id or folder)")
    revision: str | None = None
    dtype: DtypeName | None = None
    device: str | None = Field(
        default=None, pattern=DEVICE_PATTERN, description="auto, cpu, cuda, or cuda:N (the whole model)"
    )
    reference_device: str | None = Field(
        default=None,
        pattern=DEVICE_PATTERN,
        description="implicit: the reference's device when it differs from the policy's (cuda:1)",
    )
    device_map: DeviceMapName | None = Field(
        default=None, description="spread each model over the GPUs (transformers' device_map) instead"
    )
    beta: float | None = Field(default=None, ge=0)
    packed: bool | None = None

    @model_validator(mode="after")
    def _paths_fit_the_kind(self) -> Self:
        if self.kind == "implicit" and (not self.policy or not self.reference or self.path):
            raise ValueError(
                f"model {self.name!r}: an implicit model names 'policy' and 'reference' (not 'path')"
            )
        if self.kind == "classifier" and (not self.path or self.policy or self.reference):
            raise ValueError(f"model {self.name!r}: a classifier names 'path' (not 'policy' or 'reference')")
        if self.kind == "classifier" and self.reference_device:
            raise ValueError(f"model {self.name!r}: a classifier has no reference to place")
        if self.device_map and (self.device or self.reference_device):
            raise ValueError(
                f"model {self.name!r}: device_map places the models itself; drop device and reference_device"
            )
        return self

    @property
    def sources(self) -> dict[str, str]:
        """What the model loads, by role: policy and reference, or path."""
        named = {"policy": self.policy, "reference": self.reference, "path": self.path}
        return {role: value for role, value in named.items() if value}


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [spec.name for spec in self.models]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"model names must be unique; repeated: {', '.join(repeated)}")
        return self


class ModelsFileError(ValueError):
    """A models file that cannot be read or does not validate; the message names the file and the fix."""


def load_models_file(path: Path) -> list[ModelSpec]:
    """The file's models in order. Relative folders in it are relative to the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        specs = ModelsFile.model_validate(data).models
    except FileNotFoundError:
        raise ModelsFileError(f"--models {path}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise ModelsFileError(f"--models {path}: not valid TOML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in detail['loc']) or 'file'}: "
            f"{detail['msg'].removeprefix('Value error, ')}"
            for detail in error.errors()
        )
        raise ModelsFileError(f"--models {path}: {problems}") from None
    return [_relative_to(spec, path.parent) for spec in specs]


def _relative_to(spec: ModelSpec, base: Path) -> ModelSpec:
    """Sources that are relative folders next to the file become paths from it; hub ids stay as given."""
    updates = {}
    for role, value in spec.sources.items():
        candidate = base / value
        if not Path(value).is_absolute() and candidate.is_dir():
            updates[role] = str(candidate)
    return spec.model_copy(update=updates)


def single_pair(policy: str, reference: str, revision: str | None = None) -> ModelSpec:
    """The single-pair flags as a models-file entry."""
    return ModelSpec(name=DEFAULT_MODEL_NAME, policy=policy, reference=reference, revision=revision)
