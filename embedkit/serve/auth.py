"""API keys: ``Authorization: Bearer KEY`` compared in constant time."""

from __future__ import annotations

import hmac

OPEN_PATHS = frozenset({"/health", "/metrics"})
"""Routes that answer without a key (load balancers and Prometheus scrape them)."""


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (``None`` for anything else)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorized(api_key: str | None, path: str, header: str | None) -> bool:
    """Whether a request may pass: no key configured, an open path, or the right bearer token."""
    if api_key is None or path in OPEN_PATHS:
        return True
    token = bearer_token(header)
    return token is not None and hmac.compare_digest(token.encode("utf-8"), api_key.encode("utf-8"))
