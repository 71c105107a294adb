"""Topic ids and topic patterns (pure logic, no I/O).

A topic id is 1–4 ``/``-separated segments of letters, digits, ``.``, ``-`` and ``_``
(each starting with a letter or digit). A pattern uses the same segments, where ``*``
matches exactly one segment and a final ``**`` one or more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "SERVICE_TOPIC_ROOTS",
    "SYSTEM_TOPIC_ROOTS",
    "TOPIC_RE",
    "TopicPattern",
    "is_topic",
    "publish_role",
    "resource_name",
    "topic_from_name",
]

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
TOPIC_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{0,3}}$")
_PATTERN_RE = re.compile(rf"^({_SEGMENT}|\*)(/({_SEGMENT}|\*)){{0,3}}(/\*\*)?$")
_NAME_PREFIX = "topics/"


#: Topics the mesh itself writes (the bus bridge: job, run, model, health and alert
#: events): only the services may publish to them, so no client can forge, say, a
#: FAILED event on a job's topic.
SERVICE_TOPIC_ROOTS: frozenset[str] = frozenset({"trainingJobs", "phaseRuns", "models", "alerts", "health"})
#: Operator-facing announcements: admins (and the services) publish there.
SYSTEM_TOPIC_ROOTS: frozenset[str] = frozenset({"system"})


def publish_role(topic: str) -> str:
    """The weakest role that may publish to ``topic``: ``service``, ``admin`` or ``trainer``
    (user topics: everything else). See docs/security.md."""
    root = topic.split("/", 1)[0]
    if root in SERVICE_TOPIC_ROOTS:
        return "service"
    if root in SYSTEM_TOPIC_ROOTS:
        return "admin"
    return "trainer"


def is_topic(value: str) -> bool:
    """True if ``value`` is a valid topic id."""
    return len(value) <= 255 and TOPIC_RE.match(value) is not None


def resource_name(topic: str) -> str:
    """``topics/{topic}``."""
    return _NAME_PREFIX + topic


def topic_from_name(name: str) -> str | None:
    """The topic id of ``topics/{topic}``; None if ``name`` is not such a name."""
    if not name.startswith(_NAME_PREFIX):
        return None
    topic = name[len(_NAME_PREFIX):]
    return topic if is_topic(topic) else None


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A compiled topic pattern, e.g. ``trainingJobs/*`` or ``models/**``."""

    text: str
    segments: tuple[str, ...]
    #: True when the pattern ends in ``/**`` (one or more further segments).
    deep: bool

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        if len(text) > 255 or not _PATTERN_RE.match(text):
            raise ValueError(f"not a topic pattern: {text!r}")
        parts = text.split("/")
        deep = parts[-1] == "**"
        return cls(text, tuple(parts[:-1] if deep else parts), deep)

    def matches(self, topic: str) -> bool:
        parts = topic.split("/")
        n = len(self.segments)
        if self.deep:
            if len(parts) <= n:
                return False
        elif len(parts) != n:
            return False
        return all(seg == "*" or seg == part for seg, part in zip(self.segments, parts))

    @property
    def literal_prefix(self) -> str:
        """The longest prefix every matching topic starts with (``""`` if none)."""
        literal: list[str] = []
        for seg in self.segments:
            if seg == "*":
                return "/".join(literal) + "/" if literal else ""
            literal.append(seg)
        joined = "/".join(literal)
        return joined + "/" if self.deep else joined
