"""Offset paging over an ordered list, with the shared opaque page tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from services.shared.paging import DEFAULT_PAGE_SIZE, decode_page_token, encode_page_token, page_size

__all__ = ["DEFAULT_PAGE_SIZE", "page"]

T = TypeVar("T")


def page(items: Sequence[T], size: int, page_token: str, fingerprint: str = "") -> tuple[list[T], str]:
    """The page of ``items`` after ``page_token`` and the next token ('' on the last)."""
    start = decode_page_token(page_token, fingerprint, expect=int) or 0
    end = start + page_size(size)
    return list(items[start:end]), encode_page_token(end, fingerprint) if end < len(items) else ""
