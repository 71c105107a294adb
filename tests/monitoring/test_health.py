"""Health domain rules: judging, overall status, uptime, changes (no network)."""

from __future__ import annotations

import pytest

from services.monitoring.health import (
    Component,
    HealthBook,
    Kind,
    ProbeWindow,
    Status,
    Thresholds,
    UnknownComponent,
    judge,
    overall_status,
)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def comp(name: str, kind: Kind, status: Status) -> Component:
    return Component(name, kind, "x", status=status)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([(Kind.SERVICE, Status.SERVING), (Kind.DEPENDENCY, Status.SERVING), (Kind.EDGE, Status.SERVING)], Status.SERVING),
        ([(Kind.SERVICE, Status.NOT_SERVING), (Kind.DEPENDENCY, Status.SERVING)], Status.NOT_SERVING),
        ([(Kind.SERVICE, Status.SERVING), (Kind.DEPENDENCY, Status.NOT_SERVING)], Status.DEGRADED),
        ([(Kind.SERVICE, Status.SERVING), (Kind.EDGE, Status.NOT_SERVING)], Status.DEGRADED),
        ([(Kind.SERVICE, Status.DEGRADED), (Kind.EDGE, Status.SERVING)], Status.DEGRADED),
        ([(Kind.SERVICE, Status.SERVING), (Kind.EDGE, Status.UNKNOWN)], Status.UNKNOWN),
        ([(Kind.SERVICE, Status.UNKNOWN), (Kind.DEPENDENCY, Status.NOT_SERVING)], Status.DEGRADED),
        ([(Kind.SERVICE, Status.NOT_SERVING), (Kind.DEPENDENCY, Status.NOT_SERVING)], Status.NOT_SERVING),
        ([], Status.UNKNOWN),
    ],
)
def test_overall_status_rule(statuses: list[tuple[Kind, Status]], expected: Status) -> None:
    components = [comp(f"components/c{i}", k, s) for i, (k, s) in enumerate(statuses)]
    assert overall_status(components) is expected


def test_slow_probe_degrades_a_serving_component() -> None:
    status, message = judge(Status.SERVING, latency_s=0.8, error_rate=0.0, calls=0,
                            error_rate_judged=True, thresholds=Thresholds(degraded_latency_s=0.5))
    assert status is Status.DEGRADED
    assert "800ms over 500ms" in message


def test_error_rate_degrades_only_when_judged_and_with_enough_calls() -> None:
    t = Thresholds(degraded_error_rate=0.05, min_calls=20)
    assert judge(Status.SERVING, latency_s=0.01, error_rate=0.5, calls=100,
                 error_rate_judged=True, thresholds=t)[0] is Status.DEGRADED
    assert judge(Status.SERVING, latency_s=0.01, error_rate=0.5, calls=10,
                 error_rate_judged=True, thresholds=t)[0] is Status.SERVING
    assert judge(Status.SERVING, latency_s=0.01, error_rate=0.5, calls=100,
                 error_rate_judged=False, thresholds=t)[0] is Status.SERVING


def test_not_serving_keeps_the_probe_message() -> None:
    assert judge(Status.NOT_SERVING, latency_s=None, error_rate=0, calls=0, error_rate_judged=False,
                 thresholds=Thresholds(), probe_message="connection refused") == (Status.NOT_SERVING, "connection refused")


def test_book_reports_changes_with_previous_status_and_tracks_uptime() -> None:
    clock = Clock()
    book = HealthBook(Thresholds(), clock)
    book.add("components/a", Kind.SERVICE, "127.0.0.1:1")
    assert book.get("components/a").status is Status.UNKNOWN

    clock.t = 1010.0
    change = book.report("components/a", Status.SERVING, latency_s=0.002)
    assert change is not None and change.previous is Status.UNKNOWN
    assert change.component.status is Status.SERVING and change.component.last_change == 1010.0
    assert book.report("components/a", Status.SERVING, latency_s=0.003) is None  # no status change

    clock.t = 1025.0
    a = book.get("components/a")
    assert a.uptime(clock()) == 15.0 and a.last_check == 1010.0 and a.latency_s == 0.003

    change = book.report("components/a", Status.NOT_SERVING, message="health watch: UNAVAILABLE")
    assert change is not None and change.previous is Status.SERVING
    a = book.get("components/a")
    assert a.uptime(clock()) == 0.0 and a.message == "health watch: UNAVAILABLE"

    clock.t = 1030.0
    book.report("components/a", Status.SERVING, latency_s=0.001)
    clock.t = 1031.0
    assert book.get("components/a").uptime(clock()) == 1.0  # restarted: uptime from the new start


def test_slow_probe_is_a_change_to_degraded_and_uptime_continues() -> None:
    clock = Clock()
    book = HealthBook(Thresholds(degraded_latency_s=0.1), clock)
    book.add("components/a", Kind.SERVICE, "x")
    book.report("components/a", Status.SERVING, latency_s=0.01)
    clock.t += 3
    change = book.report("components/a", Status.SERVING, latency_s=0.2)
    assert change is not None and change.previous is Status.SERVING
    assert change.component.status is Status.DEGRADED
    assert change.component.uptime(clock()) == 3.0  # DEGRADED still serves


def test_snapshot_filters_kinds_and_orders_by_name() -> None:
    book = HealthBook(Thresholds(), Clock())
    book.add("components/valkey", Kind.DEPENDENCY, "redis://x")
    book.add("components/b", Kind.SERVICE, "x")
    book.add("components/a", Kind.SERVICE, "x")
    assert [c.name for c in book.snapshot()] == ["components/a", "components/b", "components/valkey"]
    assert [c.name for c in book.snapshot([Kind.DEPENDENCY])] == ["components/valkey"]
    with pytest.raises(UnknownComponent):
        book.get("components/nope")


def test_probe_window_rate_forgets_old_outcomes() -> None:
    clock = Clock()
    window = ProbeWindow(10.0, clock)
    window.add(False)
    clock.t += 5
    window.add(True)
    assert window.rate() == (0.5, 2)
    clock.t += 6  # the failure is now 11 s old
    assert window.rate() == (0.0, 1)
