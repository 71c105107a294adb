"""Cursor codec and topic patterns: pure logic, no network."""

from __future__ import annotations

import base64
import zlib

import pytest

from services.realtime.config import BridgeRoute, RealtimeConfig, parse_routes
from services.realtime.cursor import (
    CursorError,
    Position,
    decode_cursor,
    decode_page_token,
    encode_cursor,
    encode_page_token,
)
from services.realtime.topics import TopicPattern, is_topic, topic_from_name


def test_cursor_round_trips_positions_in_order() -> None:
    positions = {
        "trainingJobs/a": Position("18f0abc1234567", "1700000000000-3", 7),
        "health": Position("e2", "0-0", -1),
    }
    token = encode_cursor(positions)
    assert token.startswith("1") and "=" not in token and "/" not in token and "+" not in token
    assert decode_cursor(token) == positions
    assert list(decode_cursor(token)) == list(positions)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "1",
        "1!!!",
        "2" + encode_cursor({})[1:],
        "1" + base64.urlsafe_b64encode(b"not zlib").decode().rstrip("="),
        "1" + base64.urlsafe_b64encode(zlib.compress(b'{"a":1}')).decode().rstrip("="),
        "1" + base64.urlsafe_b64encode(zlib.compress(b'[["bad topic","e","1-0",1]]')).decode().rstrip("="),
        "1" + base64.urlsafe_b64encode(zlib.compress(b'[["t","e","x-0",1]]')).decode().rstrip("="),
        "1" + base64.urlsafe_b64encode(zlib.compress(b'[["t","e","1-0",-2]]')).decode().rstrip("="),
        "1" + base64.urlsafe_b64encode(zlib.compress(b'[["t","e","1-0",true]]')).decode().rstrip("="),
        "1" + base64.urlsafe_b64encode(zlib.compress(b"[" + b"0," * 400_000 + b"0]")).decode().rstrip("="),
    ],
)
def test_malformed_cursors_are_rejected(token: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(token)


def test_page_token_round_trips_and_rejects_garbage() -> None:
    token = encode_page_token("list/t03", "list/*")
    parsed = decode_page_token(token)
    assert (parsed.after, parsed.pattern) == ("list/t03", "list/*")
    for bad in ("", "@@", encode_page_token("bad topic", ""), "W10"):
        with pytest.raises(CursorError):
            decode_page_token(bad)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("trainingJobs/*", "trainingJobs/a", True),
        ("trainingJobs/*", "trainingJobs", False),
        ("trainingJobs/*", "trainingJobs/a/b", False),
        ("models/**", "models/a", True),
        ("models/**", "models/a/b/c", True),
        ("models/**", "models", False),
        ("*/x", "a/x", True),
        ("*/x", "a/y", False),
        ("health", "health", True),
        ("health", "healthy", False),
    ],
)
def test_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    assert TopicPattern.parse(pattern).matches(topic) is expected


def test_pattern_prefix_and_validation() -> None:
    assert TopicPattern.parse("trainingJobs/*").literal_prefix == "trainingJobs/"
    assert TopicPattern.parse("a/b/**").literal_prefix == "a/b/"
    assert TopicPattern.parse("*/x").literal_prefix == ""
    assert TopicPattern.parse("health").literal_prefix == "health"
    for bad in ("a/**/b", "a//b", "", "a b", "**"):
        with pytest.raises(ValueError):
            TopicPattern.parse(bad)


def test_topic_names() -> None:
    assert is_topic("trainingJobs/abc") and not is_topic("a/*") and not is_topic("a/b/c/d/e")
    assert topic_from_name("topics/trainingJobs/abc") == "trainingJobs/abc"
    assert topic_from_name("trainingJobs/abc") is None


def test_config_from_env_reads_knobs_and_routes() -> None:
    config = RealtimeConfig.from_env({
        "REDIS_URL": "redis://127.0.0.1:7000/0",
        "AF_REALTIME_PORT": "5555",
        "AF_REALTIME_TOPIC_MAXLEN": "50",
        "AF_REALTIME_QUEUE_SIZE": "9",
        "AF_REALTIME_BRIDGE_ROUTES": "s1={subject}, s2=health",
    })
    assert (config.server.port, config.bus.url, config.topic_maxlen, config.queue_size) == (
        5555, "redis://127.0.0.1:7000/0", 50, 9)
    assert config.topic_bus.maxlen == 50
    assert config.bridge_routes == (BridgeRoute("s1", "{subject}"), BridgeRoute("s2", "health"))
    assert RealtimeConfig.from_env({"AF_REALTIME_BRIDGE_ROUTES": ""}).bridge_routes == ()
    assert BridgeRoute("s", "phaseRuns/{subject_id}").topic_for("runs/42") == "phaseRuns/42"
    with pytest.raises(ValueError):
        parse_routes("nope")
