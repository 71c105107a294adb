"""Component-status alert rule evaluation (no network)."""

from __future__ import annotations

from services.monitoring.alerting import ComponentRule, Raise, Resolve, evaluate
from services.monitoring.health import Component, Kind, Status


def comp(name: str, status: Status, since: float) -> Component:
    return Component(name, Kind.SERVICE, "x", status=status, last_change=since)


RULE = ComponentRule("alertRules/down", "components/-", Status.NOT_SERVING, for_s=5.0)


def test_fires_only_after_the_status_held_for_the_duration() -> None:
    comps = [comp("components/a", Status.NOT_SERVING, since=100.0), comp("components/b", Status.SERVING, 90.0)]
    assert evaluate([RULE], comps, set(), now=104.0) == []
    decisions = evaluate([RULE], comps, set(), now=105.5)
    assert len(decisions) == 1
    assert isinstance(decisions[0], Raise)
    assert decisions[0].component.name == "components/a" and decisions[0].held_s == 5.5


def test_open_alert_is_not_raised_twice_and_resolves_when_the_status_clears() -> None:
    down = [comp("components/a", Status.NOT_SERVING, 100.0)]
    assert evaluate([RULE], down, {("alertRules/down", "components/a")}, now=200.0) == []
    up = [comp("components/a", Status.SERVING, 150.0)]
    decisions = evaluate([RULE], up, {("alertRules/down", "components/a")}, now=200.0)
    assert decisions == [Resolve("alertRules/down", "components/a", "components/a is SERVING now")]


def test_specific_component_rule_ignores_other_components() -> None:
    rule = ComponentRule("alertRules/valkey", "components/valkey", Status.NOT_SERVING, for_s=0.0)
    comps = [comp("components/a", Status.NOT_SERVING, 0.0), comp("components/valkey", Status.NOT_SERVING, 10.0)]
    decisions = evaluate([rule], comps, set(), now=10.0)
    assert [d.component.name for d in decisions if isinstance(d, Raise)] == ["components/valkey"]


def test_disabled_or_deleted_rule_resolves_its_open_alerts() -> None:
    comps = [comp("components/a", Status.NOT_SERVING, 0.0)]
    disabled = ComponentRule("alertRules/down", "components/-", Status.NOT_SERVING, 5.0, enabled=False)
    assert evaluate([disabled], comps, {("alertRules/down", "components/a")}, 100.0) == [
        Resolve("alertRules/down", "components/a", "rule disabled")]
    assert evaluate([], comps, {("alertRules/down", "components/a")}, 100.0) == [
        Resolve("alertRules/down", "components/a", "rule deleted")]
