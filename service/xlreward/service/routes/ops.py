"""Operations: liveness, readiness (models loaded) and Prometheus metrics. No API key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from xlreward.service.dependencies import RuntimeDep, TenantDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 once every served model is loaded; 503 while loading, or if one failed (the message says why).
    ``models``: each model's state ("loading", "loaded", "failed")."""
    ok, message = runtime.status()
    body = {
        "status": "ready" if ok else "not_ready",
        "message": message,
        "models": {name: slot.state for name, slot in runtime.slots.items()},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/v1/models")
async def list_models(runtime: RuntimeDep, tenant: TenantDep) -> dict[str, Any]:
    """The served reward models in OpenAI's list shape (first = the default), with their kind and state."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": runtime.started_at,
                "owned_by": "xlreward",
                "kind": slot.spec.kind,
                "state": slot.state,
            }
            for name, slot in runtime.slots.items()
        ],
    }


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
