"""Opaque page tokens, one format for every List RPC.

A token is base64url JSON of ``{"f": fingerprint, "p": position}``: the position where the
next page starts (an offset, a key, a (time, id) pair — whatever the list orders by) and a
fingerprint of the query's filters, so a token replayed with other filters is refused
instead of paging through the wrong list. Clients treat tokens as opaque.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from services.shared.errors import InvalidArgument

__all__ = ["DEFAULT_PAGE_SIZE", "decode_page_token", "encode_page_token", "page_size", "query_fingerprint"]

#: Page size when the request's ``page_size`` is 0 (the contracts say 50).
DEFAULT_PAGE_SIZE = 50


def page_size(requested: int) -> int:
    return requested if requested > 0 else DEFAULT_PAGE_SIZE


def query_fingerprint(*parts: object) -> str:
    """A short stable digest of the filters that define a list."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_page_token(position: Any, fingerprint: str = "") -> str:
    raw = json.dumps({"f": fingerprint, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str = "", *, expect: type | tuple[type, ...] = object) -> Any:
    """The position in ``token``; None for an empty token. A malformed token, or one
    issued for other filters, or whose position is not an ``expect``, is INVALID_ARGUMENT
    naming ``page_token``."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or "p" not in data:
            raise ValueError("not a page token")
        position = data["p"]
        if not isinstance(position, expect) or isinstance(position, bool) or (
                isinstance(position, int) and position < 0):
            raise ValueError("not a position of this list")
        if data.get("f") != fingerprint:
            raise ValueError("the filters changed since the token was issued")
        return position
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            "invalid page_token", [("page_token", f"not a page token of this query ({exc})")],
            reason="INVALID_PAGE_TOKEN",
        ) from None
