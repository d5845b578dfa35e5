"""Admin: which models are served, and switching to a new pair without a restart (the iteration loop
does this after each training round). Guarded by ``admin_key``; disabled when it is not set."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from xlreward.service.dependencies import RuntimeDep
from xlreward.service.errors import ERROR_RESPONSES, ServiceError
from xlreward.service.runtime import Runtime
from xlreward.service.scoring.errors import ScoringError

router = APIRouter(prefix="/admin")


class ModelPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str
    reference: str


class ServedModels(ModelPair):
    model: str
    scoring: str | None = Field(
        description="how the pair is scored, e.g. 'cpu, float32, padded rows'; null while it loads"
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


def served(runtime: Runtime) -> ServedModels:
    return ServedModels(
        policy=str(runtime.policy_path),
        reference=str(runtime.reference_path),
        model=runtime.model_name,
        scoring=runtime.engine.describe() if runtime.engine is not None else None,
    )


@router.get("/models", response_model=ServedModels, responses=ERROR_RESPONSES)
async def get_models(runtime: RuntimeDep, _: AdminDep) -> ServedModels:
    return served(runtime)


@router.post("/models", response_model=ServedModels, responses=ERROR_RESPONSES)
async def switch_models(body: ModelPair, runtime: RuntimeDep, _: AdminDep) -> ServedModels:
    """Loads the new pair beside the serving one and swaps it in; answers once the new pair serves.
    In-flight requests complete on the pair they started with."""
    runtime.require_ready()
    policy, reference = Path(body.policy), Path(body.reference)
    for name, path in (("policy", policy), ("reference", reference)):
        if not path.is_dir():
            raise ServiceError(422, "bad_model", f"{name} {path} is not a checkpoint folder on the server")
    try:
        await runtime.switch_models(policy, reference)
    except (ScoringError, OSError, ValueError) as error:
        raise ServiceError(
            422, "bad_model", f"the new pair did not load, the old one still serves: {error}"
        ) from None
    return served(runtime)
