"""Pure-ASGI middleware in front of every route: the API key (401) and the payload limit (413)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .auth import authorized
from .errors import error_body

if TYPE_CHECKING:
    from .server import Server


class Guard:
    """Pure-ASGI middleware: the API key (401) and the payload limit (413, from ``Content-Length`` and by counting
    the body as it arrives), before any route reads a byte."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        cfg = self.server.config
        if not authorized(cfg.api_key, path, headers.get("authorization")):
            self.server.metrics.failure("auth")
            return await self._reply(send, path, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                     "auth", {"www-authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.payload_limit:
            self.server.metrics.failure("payload")
            return await self._reply(send, path, 413, f"the body is {int(length)} bytes, over the payload limit "
                                     f"of {cfg.payload_limit} (--payload-limit)", "payload")
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # read the body here, counting bytes (a chunked body has no Content-Length), then hand it on whole
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            seen += len(message.get("body", b""))
            if seen > cfg.payload_limit:
                self.server.metrics.failure("payload")
                return await self._reply(send, path, 413, f"the body is over the payload limit of "
                                         f"{cfg.payload_limit} bytes (--payload-limit)", "payload")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        await self.app(scope, replay, send)

    @staticmethod
    async def _reply(send: Callable, path: str, status: int, message: str, kind: str,
                     extra: dict[str, str] | None = None) -> None:
        body = json.dumps(error_body(path, status, message, kind)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
