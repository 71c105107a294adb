"""Offset paging over an ordered list with opaque page tokens."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import TypeVar

from services.shared.errors import InvalidArgument

__all__ = ["DEFAULT_PAGE_SIZE", "page"]

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
_PREFIX = "o1:"


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{offset}".encode()).decode().rstrip("=")


def _decode(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith(_PREFIX) or not raw[len(_PREFIX):].isdigit():
        raise InvalidArgument("malformed page_token", [("page_token", "not a token this server issued")])
    return int(raw[len(_PREFIX):])


def page(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    """The page of ``items`` after ``page_token`` and the next token ('' on the last)."""
    size = page_size or DEFAULT_PAGE_SIZE
    start = _decode(page_token) if page_token else 0
    end = start + size
    return list(items[start:end]), _encode(end) if end < len(items) else ""
