"""Alert rule evaluation for component-status conditions (pure logic).

A rule ``(component, status, for_s)`` holds for a component while the component's
status equals ``status``; it has held since the component's ``last_change``. When it
has held for at least ``for_s`` and the (rule, component) pair has no open alert, the
evaluator decides :class:`Raise`; when an open alert's condition no longer holds, or its
rule is disabled or gone, or its component is gone, it decides :class:`Resolve`.
``components/-`` matches every component (each fires its own alert).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.monitoring.health import Component, Status

__all__ = ["ANY_COMPONENT", "ComponentRule", "Raise", "Resolve", "evaluate", "summary"]

ANY_COMPONENT = "components/-"

#: (rule name, component name)
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ComponentRule:
    name: str  # alertRules/{id}
    component: str  # components/{c} or components/-
    status: Status
    for_s: float
    enabled: bool = True

    def matches(self, component: str) -> bool:
        return self.component in (ANY_COMPONENT, component)


@dataclass(frozen=True, slots=True)
class Raise:
    rule: str
    component: Component
    held_s: float


@dataclass(frozen=True, slots=True)
class Resolve:
    rule: str
    component: str
    reason: str


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


def evaluate(
    rules: Iterable[ComponentRule],
    components: Sequence[Component],
    open_alerts: Iterable[Key],
    now: float,
) -> list[Raise | Resolve]:
    """Decisions for this evaluation (see the module docstring)."""
    by_rule = {r.name: r for r in rules}
    by_name = {c.name: c for c in components}
    open_set = set(open_alerts)
    decisions: list[Raise | Resolve] = []
    for key in sorted(open_set):
        rule_name, comp_name = key
        rule = by_rule.get(rule_name)
        comp = by_name.get(comp_name)
        if rule is None:
            decisions.append(Resolve(rule_name, comp_name, "rule deleted"))
        elif not rule.enabled:
            decisions.append(Resolve(rule_name, comp_name, "rule disabled"))
        elif comp is None or not rule.matches(comp_name):
            decisions.append(Resolve(rule_name, comp_name, "component no longer matched"))
        elif comp.status is not rule.status:
            decisions.append(Resolve(rule_name, comp_name, f"{comp_name} is {comp.status.name} now"))
    for rule in sorted(by_rule.values(), key=lambda r: r.name):
        if not rule.enabled:
            continue
        for comp in components:
            if not rule.matches(comp.name) or (rule.name, comp.name) in open_set:
                continue
            if comp.status is not rule.status:
                continue
            since = comp.last_change if comp.last_change is not None else now
            held = now - since
            if held >= rule.for_s:
                decisions.append(Raise(rule.name, comp, held))
    return decisions


def summary(rule_status: Status, component: str, for_s: float) -> str:
    """One-line alert summary, e.g. ``components/valkey NOT_SERVING for 5.0s``."""
    return f"{component} {rule_status.name} for {_fmt_seconds(for_s)}"

