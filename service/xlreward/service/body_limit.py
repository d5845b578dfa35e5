"""Admission before work: a request body larger than ``max_body_bytes`` is refused with 413 before it is
held whole.

A declared ``Content-Length`` over the limit is refused before one byte of the body is read. A body sent
without a length (chunked) is read up to the limit and refused the moment it passes it. Either way the
server holds at most the limit, never the body the client meant to send.

A plain ASGI middleware, like the request metrics: the body is read here, in full (it is at most the limit)
and handed to the app as one message, and later ``receive`` calls go to the server again, so the routes
still see a client's disconnect.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xlreward.service.errors import envelope


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"the body declares {declared} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"the body passed {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        response = envelope(
            413,
            "body_too_large",
            f"{what}, over the server's limit of {self.max_bytes} bytes (XLREWARD_MAX_BODY_BYTES): split the "
            "request into smaller ones",
            Connection="close",
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server answers a malformed length itself
    return None
