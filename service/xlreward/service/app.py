"""The reward server's FastAPI app. ``create_app(settings)`` builds one; nothing happens at import time.

Pipeline per request: validate (wire schemas) -> tokenize -> queue -> batch (scheduler thread) -> forward
both models -> unbatch -> ranked/ordered response. Models load once, at start-up, in the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xlreward.service.body_limit import BodyLimit
from xlreward.service.errors import install_error_handlers
from xlreward.service.metrics import ServiceMetrics
from xlreward.service.routes import admin, best_of_n, generate, openrlhf, ops, reward
from xlreward.service.runtime import Runtime
from xlreward.service.settings import ServiceSettings

log = logging.getLogger("xlreward.service")


def create_app(settings: ServiceSettings) -> FastAPI:
    """Builds the app; the models load from ``settings`` when the app starts."""
    metrics = ServiceMetrics()
    runtime = Runtime(settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="xlreward",
        summary="Reward models for multilingual alignment (implicit DPO pairs and classifier RMs), batched "
        "across clients.",
        version="0.1.0",
        lifespan=lifespan,
        # Served by the ops routes instead, behind a key when keys are set.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (reward, generate, best_of_n, openrlhf, ops, admin):
        app.include_router(module.router)

    # The last added runs first: requests are counted (413s too), then a body over the limit is refused
    # before any other work.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


class RequestMetrics:
    """Counts requests by endpoint, tenant and status, and times them. A plain ASGI middleware on purpose:
    Starlette's BaseHTTPMiddleware hides client disconnects from the endpoint, and the reward route needs
    to see them to stop spending compute on an abandoned request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = getattr(scope.get("route"), "path", "unmatched")
        tenant = scope.get("state", {}).get("tenant", "-")
        self.metrics.request_latency.labels(endpoint=endpoint).observe(seconds)
        self.metrics.requests.labels(endpoint=endpoint, tenant=tenant, status=str(status)).inc()
        if status in (429, 504):
            self.metrics.rejected.labels(reason="queue_full" if status == 429 else "timeout").inc()
