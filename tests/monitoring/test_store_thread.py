"""The alert store's SQLite calls run on the store's own thread, never on the event loop.

Alerts are rewritten about once a second while open; each write waits for the disk.
Every store method is wrapped to note the thread it runs on; after start-up (the
constructor installs the built-in rules before the server serves) no call may run on
the event loop's thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import grpc
import grpc.aio
import pytest

from agentforge.monitoring.v1 import request_response_pb2 as rr
from services.monitoring.store import MonitoringStore

from .test_alerts import component_rule

_METHODS = ("meta", "set_meta", "put_rule", "rule", "rule_by_request_id", "rules", "delete_rule", "put_alert",
            "alert", "alerts", "open_alerts", "append_event", "events_after", "oldest_event_seq")


async def test_no_store_call_runs_on_the_event_loop(monitoring_factory: Any, stub_factory: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    recording = threading.Event()

    def traced(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if recording.is_set():
                calls.append((name, threading.get_ident()))
            return fn(*args, **kwargs)
        return wrapper

    for name in _METHODS:
        monkeypatch.setattr(MonitoringStore, name, traced(name, getattr(MonitoringStore, name)))
    mon = await monitoring_factory()
    loop_thread = threading.get_ident()
    recording.set()
    stub = stub_factory(mon.port)
    created = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(alert_rule=component_rule(), alert_rule_id="r1",
                                                                   request_id="q1"))
    await stub.GetAlertRule(rr.GetAlertRuleRequest(name=created.name))
    await stub.ListAlertRules(rr.ListAlertRulesRequest())
    await stub.ListAlerts(rr.ListAlertsRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetAlert(rr.GetAlertRequest(name="alerts/none"))
    stream = stub.WatchAlerts(rr.WatchAlertsRequest(cursor=f"{mon.store.epoch}:0"))
    with pytest.raises(asyncio.TimeoutError):  # no alert: the replay ends, the stream waits
        async with asyncio.timeout(0.5):
            await stream.read()
    stream.cancel()
    await stub.DeleteAlertRule(rr.DeleteAlertRuleRequest(name=created.name))
    recording.clear()
    seen = {name for name, _ in calls}
    assert {"rule_by_request_id", "rule", "put_rule", "rules", "open_alerts", "alerts", "alert",
            "oldest_event_seq", "events_after", "delete_rule"} <= seen
    on_loop = sorted({name for name, thread in calls if thread == loop_thread})
    assert on_loop == [], f"store calls on the event loop: {on_loop}"
