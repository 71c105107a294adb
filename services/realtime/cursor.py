"""Subscription cursors and page tokens (pure logic, no I/O).

A subscription cursor records, for every topic of a subscription, the position of the
last message delivered (or where delivery starts): the topic's epoch, the Redis stream
entry id and the message's sequence. ``seq == -1`` means "no message delivered yet,
accept whatever is retained" (a start from the beginning of the retained history).

Token format (opaque to clients): ``"1"`` followed by the unpadded base64url of the
zlib-compressed compact JSON ``[[topic, epoch, entry_id, seq], ...]``. Compression keeps
cursors of subscriptions with many topics under the 4 KiB request limit longer.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from services.realtime.topics import TOPIC_RE, TopicPattern

__all__ = [
    "CursorError",
    "PageToken",
    "Position",
    "decode_cursor",
    "decode_page_token",
    "encode_cursor",
    "encode_page_token",
]

_VERSION = "1"
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_EPOCH = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
_MAX_JSON = 256 * 1024


class CursorError(ValueError):
    """A malformed cursor or page token."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a subscription stands in one topic."""

    epoch: str
    entry_id: str
    #: Sequence of the last delivered message; 0 = none in this epoch; -1 = start of
    #: the retained history (whatever its first sequence).
    seq: int

    @property
    def entry_key(self) -> tuple[int, int]:
        ms, _, n = self.entry_id.partition("-")
        return int(ms), int(n)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise CursorError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CursorError("not base64url") from exc


def encode_cursor(positions: Mapping[str, Position]) -> str:
    """The opaque token for these positions."""
    rows = [[topic, p.epoch, p.entry_id, p.seq] for topic, p in positions.items()]
    raw = json.dumps(rows, separators=(",", ":")).encode()
    return _VERSION + _b64encode(zlib.compress(raw, 9))


def decode_cursor(token: str) -> dict[str, Position]:
    """Parse a token from :func:`encode_cursor`; :class:`CursorError` if malformed."""
    if not token.startswith(_VERSION):
        raise CursorError("unknown cursor version")
    compressed = _b64decode(token[len(_VERSION):])
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, _MAX_JSON)
        if inflater.unconsumed_tail or not inflater.eof:
            raise CursorError("cursor is truncated or too large")
        rows = json.loads(raw)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CursorError("cursor is not readable") from exc
    if not isinstance(rows, list):
        raise CursorError("cursor has the wrong shape")
    positions: dict[str, Position] = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            raise CursorError("cursor has the wrong shape")
        topic, epoch, entry_id, seq = row
        if not (isinstance(topic, str) and TOPIC_RE.match(topic)):
            raise CursorError("cursor names an invalid topic")
        if not (isinstance(epoch, str) and _EPOCH.match(epoch)):
            raise CursorError("cursor has an invalid epoch")
        if not (isinstance(entry_id, str) and _ENTRY_ID.match(entry_id)):
            raise CursorError("cursor has an invalid position")
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= -1):
            raise CursorError("cursor has an invalid sequence")
        positions[topic] = Position(epoch, entry_id, seq)
    return positions


@dataclass(frozen=True, slots=True)
class PageToken:
    """ListTopics paging state: the last topic returned and the filter it was for."""

    after: str
    pattern: str


def encode_page_token(after: str, pattern: str) -> str:
    return _b64encode(json.dumps([after, pattern], separators=(",", ":")).encode())


def decode_page_token(token: str) -> PageToken:
    try:
        after, pattern = json.loads(_b64decode(token))
    except (ValueError, TypeError) as exc:
        raise CursorError("page_token is not readable") from exc
    if not (isinstance(after, str) and TOPIC_RE.match(after) and isinstance(pattern, str)):
        raise CursorError("page_token is not readable")
    if pattern:
        try:
            TopicPattern.parse(pattern)
        except ValueError as exc:
            raise CursorError("page_token is not readable") from exc
    return PageToken(after, pattern)

