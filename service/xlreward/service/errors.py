"""One error envelope for everything the server answers with a status >= 400.

Domain errors are exceptions; routes never return "error or None". ``install_error_handlers`` maps each
kind to its status and the ``ErrorEnvelope`` body, so a client always gets {"error": {"code", "message",
"location"}}, including for malformed JSON and for our own bugs (500, without a stack trace).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xlreward.service.generation.errors import GenerationError
from xlreward.service.protocol import ErrorDetail, ErrorEnvelope
from xlreward.service.scheduler import Cancelled, DeadlineExceeded, QueueFull, ShuttingDown
from xlreward.service.scoring.errors import ItemError

log = logging.getLogger("xlreward.service")

CLIENT_CLOSED_REQUEST = 499  # nginx's code: nobody reads it, but logs and metrics do


class ServiceError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        location: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.location = location
        self.headers = headers or {}


def item_error(error: ItemError, location: str) -> ServiceError:
    """413 for an item longer than the context (it names the limit), 422 for any other unscorable item."""
    status = 413 if error.reason == "too_long" else 422
    return ServiceError(status, error.reason, f"{location}: {error}", location=location)


# Responses each route declares, so the OpenAPI spec shows the envelope. A request its schema allows is
# refused only for what no schema can state, each with its own code: text longer than the model's context or
# a max_tokens beyond it ("too_long"), more items than the server's limit ("too_many_items"), a prompt the
# model's template cannot render ("bad_prompt", "empty_prompt", "not_prefix_stable"), an unknown model
# ("unknown_model"), OpenRLHF queries that do not pair with their prompts ("query_mismatch"), "seeds" that
# do not give one seed per prompt ("seeds_mismatch").
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in [
        (
            400,
            "malformed request body, a field this server does not implement (named), or a max_tokens the "
            "model's context cannot hold after the prompt",
        ),
        (401, "missing or unknown API key"),
        (403, "the admin endpoints are off (no admin key is set)"),
        (404, "no served model has the name the request gives"),
        (413, "body over the size limit, too many items, or an item longer than the context"),
        (422, "invalid request: the message names the field and what to fix"),
        (429, "queue full: retry after the Retry-After header's seconds"),
        (502, "the OpenAI-compatible generation upstream failed"),
        (503, "models still loading or server shutting down"),
        (504, "the request's deadline passed"),
    ]
}


def envelope(
    status: int, code: str, message: str, location: str | None = None, **headers: str
) -> JSONResponse:
    detail = ErrorDetail(code=code, message=_encodable(message), location=location and _encodable(location))
    return JSONResponse(ErrorEnvelope(error=detail).model_dump(), status_code=status, headers=headers or None)


def _encodable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate a message quotes from a request (a field's name, say)
    is written out as its escape, where it would otherwise fail the response itself."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def format_location(loc: Sequence[int | str]) -> str:
    """("body", "items", 3, "response") -> "items[3].response"."""
    text = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validation_response(error: RequestValidationError) -> JSONResponse:
    details = list(error.errors())
    if any(detail.get("type") == "json_invalid" for detail in details):
        ctx = details[0].get("ctx", {})
        return envelope(400, "malformed_json", f"the request body is not valid JSON: {ctx.get('error', '')}")
    first = details[0]
    location = format_location(first.get("loc", ()))
    problems = "; ".join(
        f"{format_location(d.get('loc', ())) or 'body'}: {d.get('msg')}" for d in details[:5]
    )
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return envelope(422, "invalid_request", problems + more, location or None)


def _http_response(error: StarletteHTTPException, request: Request) -> JSONResponse:
    if error.status_code == 400:
        return envelope(400, "malformed_body", "the request body could not be read: send UTF-8 encoded JSON")
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    headers = dict(error.headers or {})
    documented = documented_methods(request)
    if error.status_code == 405 and documented:
        headers["Allow"] = ", ".join(documented)
    return envelope(error.status_code, code, str(error.detail), **headers)


def documented_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists at the request's path (none for an undocumented path). A 405's
    Allow header names them all: the router's names only those of the first route at the path, and GET and
    POST /admin/models are two routes."""
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    return sorted(method.upper() for method in paths.get(request.url.path, {}))


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ServiceError)
        return envelope(error.status, error.code, error.message, error.location, **error.headers)

    async def on_generation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, GenerationError)
        return envelope(error.status, error.code, error.message, error.location)

    async def on_validation(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return _validation_response(error)

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return _http_response(error, request)

    async def on_queue_full(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, QueueFull)
        return envelope(429, "queue_full", str(error), **{"Retry-After": str(error.retry_after)})

    async def on_deadline(_: Request, error: Exception) -> JSONResponse:
        return envelope(504, "timeout", str(error))

    async def on_cancelled(_: Request, error: Exception) -> JSONResponse:
        return envelope(CLIENT_CLOSED_REQUEST, "cancelled", str(error))

    async def on_shutdown(_: Request, error: Exception) -> JSONResponse:
        return envelope(503, "shutting_down", str(error), **{"Retry-After": "5"})

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "internal_error", f"internal error ({type(error).__name__}); see the server log")

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(GenerationError, on_generation_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(QueueFull, on_queue_full)
    app.add_exception_handler(DeadlineExceeded, on_deadline)
    app.add_exception_handler(Cancelled, on_cancelled)
    app.add_exception_handler(ShuttingDown, on_shutdown)
    app.add_exception_handler(Exception, on_unexpected)
