"""The server's HTTP errors: :class:`Problem` (raised by routes), the two error shapes (OpenAI's
``{"error": {message, type, param, code}}`` on the OpenAI routes, TEI's ``{"error", "error_type"}`` elsewhere) and
the exception handlers that answer them.
"""

from __future__ import annotations

import json
from typing import Any

OPENAI_PATHS = frozenset({"/v1/embeddings", "/embeddings"})
"""Routes whose errors take OpenAI's shape; every other route answers TEI's ``{"error", "error_type"}``."""


class Problem(Exception):
    """An HTTP error answered in the route's error shape (OpenAI or TEI).

    (The route modules have no ``from __future__ import annotations``: FastAPI reads the routes' annotations, and
    ``Request`` is an optional dependency, imported only once :func:`~embedkit.serve.app.create_app` has checked
    the ``serve`` extra.)"""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


_OPENAI_TYPES = {401: ("invalid_request_error", "invalid_api_key"), 404: ("invalid_request_error", "model_not_found"),
                 413: ("invalid_request_error", "payload_too_large"), 429: ("rate_limit_error", "rate_limit_exceeded"),
                 500: ("server_error", "internal_error"), 503: ("server_error", "service_unavailable")}


def error_body(path: str, status: int, message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """The error body of ``path``'s family: OpenAI's ``{"error": {message, type, param, code}}`` or TEI's
    ``{"error", "error_type"}``."""
    if path in OPENAI_PATHS:
        etype, code = _OPENAI_TYPES.get(status, ("invalid_request_error", kind))
        return {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return {"error": message, "error_type": kind}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    """A compact JSON response (starlette's ``Response``)."""
    from starlette.responses import Response

    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")


async def problem_handler(request: Any, exc: Problem) -> Any:
    """A :class:`Problem` -> its status and the route's error shape (counted in ``te_request_failure``)."""
    request.app.state.server.metrics.failure(exc.kind)
    return json_response(error_body(request.url.path, exc.status, exc.message, exc.kind, exc.param), exc.status,
                         exc.headers)


async def validation_handler(request: Any, exc: Any) -> Any:
    """FastAPI's ``RequestValidationError`` -> 422 in the route's error shape, naming the first field."""
    request.app.state.server.metrics.failure("validation")
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                        for e in errors[:5])
    return json_response(error_body(request.url.path, 422, message or "invalid request", "validation", where or None),
                         422)


def add_error_handlers(app: Any) -> None:
    """Answer :class:`Problem` and request-validation errors in the route's error shape."""
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(Problem, problem_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
