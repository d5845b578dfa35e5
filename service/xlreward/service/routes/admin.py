"""Admin: which models are served, and switching one named model to new checkpoints without a restart
(the iteration loop does this after each training round). Guarded by ``admin_key``; disabled when it is
not set."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xlreward.service.dependencies import RuntimeDep
from xlreward.service.errors import ERROR_RESPONSES, ServiceError
from xlreward.service.model_source import check_model_available
from xlreward.service.models_config import ModelSpec
from xlreward.service.runtime import ModelSlot
from xlreward.service.scoring.errors import ScoringError

log = logging.getLogger("xlreward.service.admin")
router = APIRouter(prefix="/admin")


class ModelSwitch(BaseModel):
    """A new version of a served model: ``name`` (default: the first model) and its new sources, the
    policy and reference of an implicit model or the path of a classifier (hub ids or folders)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    policy: str | None = None
    reference: str | None = None
    path: str | None = None
    revision: str | None = None


class ServedModel(BaseModel):
    name: str
    kind: str
    policy: str | None
    reference: str | None
    path: str | None
    revision: str | None
    state: str = Field(description="loading, loaded or failed")
    scoring: str | None = Field(
        description="how the model scores, e.g. 'cpu, float32, padded rows'; null while it loads"
    )
    weight_bytes: int | None = Field(
        default=None,
        description="bytes of the weights the model runs, those it shares with other models included "
        "(LoRA adapters over one base share it); null while it loads",
    )


class ServedModels(BaseModel):
    models: list[ServedModel]  # the first is the default
    weight_bytes: int = Field(
        description="bytes of weights the server holds for its loaded models, each shared tensor counted once"
    )


def require_admin(request: Request, runtime: RuntimeDep) -> None:
    key = runtime.settings.admin_key
    if not key:
        raise ServiceError(
            403, "admin_disabled", "the admin endpoints are off: set XLREWARD_ADMIN_KEY to use them"
        )
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(), presented.encode()):
        raise ServiceError(
            401,
            "unauthorized",
            "send the admin key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Annotated[None, Depends(require_admin)]


def served(slot: ModelSlot, weight_bytes: int | None = None) -> ServedModel:
    spec = slot.spec
    return ServedModel(
        name=spec.name,
        kind=spec.kind,
        policy=spec.policy,
        reference=spec.reference,
        path=spec.path,
        revision=spec.revision,
        state=slot.state,
        scoring=slot.loaded.model.describe() if slot.loaded is not None else None,
        weight_bytes=weight_bytes,
    )


@router.get("/models", response_model=ServedModels, responses=ERROR_RESPONSES)
async def get_models(runtime: RuntimeDep, _: AdminDep) -> ServedModels:
    storages = await asyncio.to_thread(runtime.weight_storages)
    held = {key: size for per_model in storages.values() for key, size in per_model.items()}
    return ServedModels(
        models=[
            served(slot, sum(storages[name].values()) if name in storages else None)
            for name, slot in runtime.slots.items()
        ],
        weight_bytes=sum(held.values()),
    )


@router.post("/models", response_model=ServedModel, responses=ERROR_RESPONSES)
async def switch_model(body: ModelSwitch, runtime: RuntimeDep, _: AdminDep) -> ServedModel:
    """Loads the new version of the named model beside the serving one and swaps it in; answers once it
    serves. In-flight requests complete on the version they started with."""
    slot = runtime.slot(body.name)
    runtime.require_model(slot.spec.name)
    changes = body.model_dump(exclude={"name"}, exclude_none=True)
    try:
        spec = ModelSpec.model_validate({**slot.spec.model_dump(), "revision": None, **changes})
    except (ValidationError, ValueError) as error:
        raise ServiceError(422, "bad_model", f"model {slot.spec.name!r} was not switched: {error}") from None
    try:
        for role, source in spec.sources.items():
            check_model_available(source, revision=spec.revision, what=role)
        await runtime.switch_model(slot.spec.name, spec)
    except (ScoringError, OSError, ValueError) as error:
        # What failed names files on the server's disk (which exist, which do not): it goes to the server's
        # log, and the caller learns only that the sources did not load.
        log.warning("model %r was not switched to %s: %s", slot.spec.name, spec.sources, error)
        raise ServiceError(
            422,
            "bad_model",
            f"model {slot.spec.name!r} was not switched: its new sources did not load (the server's log says "
            "why); the old version still serves",
        ) from None
    return served(runtime.slots[slot.spec.name])
