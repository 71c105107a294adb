"""Opaque watch cursors: ``base64url("v1|<epoch>|<job id>|<sequence>")``.

The epoch is the job store's (minted when the database is created), so a cursor from a
store that was reset no longer matches and the watcher learns that history was lost.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

__all__ = ["WatchCursor", "MalformedCursor"]


class MalformedCursor(ValueError):
    """A cursor token that this service did not issue."""


@dataclass(frozen=True, slots=True)
class WatchCursor:
    epoch: str
    job_id: str
    sequence: int

    def encode(self) -> str:
        raw = f"v1|{self.epoch}|{self.job_id}|{self.sequence}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> WatchCursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise MalformedCursor("cursor is not a token issued by this service") from None
        parts = raw.split("|")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1] or not parts[2] or not parts[3].isdigit():
            raise MalformedCursor("cursor is not a token issued by this service")
        return cls(parts[1], parts[2], int(parts[3]))
