"""Credentials for the benchmarks: one way for every benchmark to call the edge.

The edge always enforces JWT (docs/security.md), so a benchmark authenticates like any
client: a dev token minted from the checkout's ``.secrets/`` (created if missing), the same
door as ``make token``. Each benchmark names its own subject, so the edge's per-subject
rate limits see them as separate users.
"""

from __future__ import annotations

from services.shared.auth import ensure_dev_secrets, mint_token

__all__ = ["bearer_headers", "bearer_metadata"]


def bearer_headers(role: str, subject: str, ttl_s: int = 3600) -> dict[str, str]:
    """``{"authorization": "Bearer <jwt>"}`` for ``role`` (viewer, trainer, operator,
    admin) and ``subject``, valid ``ttl_s`` seconds; HTTP headers for httpx."""
    ensure_dev_secrets()
    return {"authorization": f"Bearer {mint_token(role, subject=subject, ttl_s=ttl_s)}"}


def bearer_metadata(role: str, subject: str, ttl_s: int = 3600) -> tuple[tuple[str, str], ...]:
    """The same credentials as gRPC call metadata."""
    return tuple(bearer_headers(role, subject, ttl_s).items())
