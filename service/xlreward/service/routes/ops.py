"""Operations: liveness and readiness (no API key: probes and load balancers call them), and, behind a key
when keys are set, Prometheus metrics (tenant names are in their labels) and the OpenAPI document and docs
(they list what the server offers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from xlreward.service.dependencies import RuntimeDep, TenantDep
from xlreward.service.errors import ERROR_RESPONSES

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


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **ERROR_RESPONSES,
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "metrics in Prometheus' text format",
        },
    },
)
async def metrics(runtime: RuntimeDep, tenant: TenantDep) -> Response:
    """Prometheus metrics; a scraper sends a key like any client (Prometheus' ``authorization`` setting)."""
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, tenant: TenantDep) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(request: Request, tenant: TenantDep) -> HTMLResponse:
    """Swagger UI. With API keys set the page is served to a client that sends a key, but the browser's
    own fetch of /openapi.json carries none: read the document with the key instead."""
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - docs")
