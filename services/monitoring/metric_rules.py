"""Metric-threshold conditions (``AlertRule.metric``) evaluated over :class:`SeriesHistory`.

A :class:`MetricQuery` is the domain form of an ``agentforge.monitoring.v1.MetricCondition``
(built and checked by :func:`query_from_proto`). :func:`evaluate_query` computes one value
per group, in PromQL terms (``w`` = ``rate_window``):

==================  ==========================================================================
condition           value per group
==================  ==========================================================================
plain, no window    ``metric{…}`` — each series its own group (the gauge's current value)
plain, window       ``rate(metric{…}[w])`` — each series its own group
``group_by``        ``sum by (group_by) (…)`` of the above
``quantile``        ``histogram_quantile(q, sum by (le, group_by) (rate(metric_bucket{…}[w])))``
``denominator``     ``sum by (group_by) (rate(metric{…}[w])) / sum by (group_by) (rate(den{…}[w]))``
==================  ==========================================================================

Empty ``group_by`` with ``quantile`` or ``denominator`` is one group over every series
(PromQL ``sum(…)``). A group without data has no value (the condition does not hold
for it): no series, fewer than two samples in the window, a zero denominator, an empty
histogram. One deliberate difference from PromQL: a ratio group whose denominator has
data but whose numerator has no series at all counts the numerator as 0 (PromQL would
drop the group) — an error counter child appears only at the first error, and a
"success ratio below" rule must still see a service that answers nothing but errors.

:class:`MetricRuleState` adds ``for_duration``: it remembers since when each (rule,
group) has held, in memory (a restart of the monitoring service restarts the wait, as
in Prometheus without ``ALERTS_FOR_STATE`` restore).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agentforge.monitoring.v1 import alert_rule_pb2
from services.monitoring.series import (
    Matcher,
    MatchType,
    RegexError,
    SeriesHistory,
    bucket_quantile,
    series_key,
)
from services.shared.errors import InvalidArgument

__all__ = ["COMPARISONS", "GroupValue", "MetricQuery", "MetricRuleState", "describe", "evaluate_query",
           "query_from_proto", "wanted_samples"]

COMPARISONS = {
    alert_rule_pb2.COMPARISON_GREATER_THAN: (">", lambda v, t: v > t),
    alert_rule_pb2.COMPARISON_GREATER_THAN_OR_EQUAL: (">=", lambda v, t: v >= t),
    alert_rule_pb2.COMPARISON_LESS_THAN: ("<", lambda v, t: v < t),
    alert_rule_pb2.COMPARISON_LESS_THAN_OR_EQUAL: ("<=", lambda v, t: v <= t),
    alert_rule_pb2.COMPARISON_EQUAL: ("==", lambda v, t: v == t),
    alert_rule_pb2.COMPARISON_NOT_EQUAL: ("!=", lambda v, t: v != t),
}


@dataclass(frozen=True, slots=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    def text(self) -> str:
        ops = {MatchType.EQUAL: "=", MatchType.NOT_EQUAL: "!=", MatchType.REGEX: "=~", MatchType.NOT_REGEX: "!~"}
        inner = ",".join(f'{m.name}{ops[m.type]}"{m.value}"' for m in self.matchers)
        return f"{self.metric}{{{inner}}}" if inner else self.metric


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """A checked MetricCondition."""

    selector: Selector
    comparison: int
    threshold: float
    for_s: float
    window_s: float | None
    quantile: float | None
    denominator: Selector | None
    group_by: tuple[str, ...]

    @property
    def aggregated(self) -> bool:
        return bool(self.group_by) or self.quantile is not None or self.denominator is not None

    def bucket_metric(self) -> str:
        m = self.selector.metric
        return m if m.endswith("_bucket") else f"{m}_bucket"


@dataclass(frozen=True, slots=True)
class GroupValue:
    """The value of one group: its key (``series_key`` of its labels) and labels."""

    key: str
    labels: Mapping[str, str]
    value: float


def _matchers(labels: Mapping[str, str], matchers: Sequence[alert_rule_pb2.LabelMatcher],
              path: str, violations: list[tuple[str, str]]) -> tuple[Matcher, ...]:
    out = [Matcher.of(k, MatchType.EQUAL, v) for k, v in sorted(labels.items())]
    for i, m in enumerate(matchers):
        try:
            out.append(Matcher.of(m.name, MatchType(m.type), m.value))
        except RegexError as exc:
            violations.append((f"{path}[{i}].value", f"not a regular expression: {exc}"))
        except ValueError:
            violations.append((f"{path}[{i}].type", "a match type is required"))
    return tuple(out)


def query_from_proto(cond: alert_rule_pb2.MetricCondition, field: str = "alert_rule.metric") -> MetricQuery:
    """The domain query; raises InvalidArgument (field violations) for what the
    request's buf.validate rules cannot express."""
    violations: list[tuple[str, str]] = []
    matchers = _matchers(cond.labels, cond.matchers, f"{field}.matchers", violations)
    window = cond.rate_window.ToNanoseconds() / 1e9 if cond.HasField("rate_window") else None
    quantile = cond.quantile if cond.HasField("quantile") else None
    denominator = None
    if cond.HasField("denominator"):
        d = cond.denominator
        denominator = Selector(d.metric or cond.metric,
                               _matchers(d.labels, d.matchers, f"{field}.denominator.matchers", violations))
    if quantile is not None and denominator is not None:
        violations.append((f"{field}.denominator", "a condition has either a quantile or a denominator, not both"))
    if (quantile is not None or denominator is not None) and window is None:
        violations.append((f"{field}.rate_window", "required with quantile or denominator"))
    if quantile is not None and "le" in cond.group_by:
        violations.append((f"{field}.group_by", "le is the bucket label; a quantile is computed per group"))
    if violations:
        raise InvalidArgument("invalid metric condition", violations)
    return MetricQuery(
        selector=Selector(cond.metric, matchers),
        comparison=cond.comparison,
        threshold=cond.threshold,
        for_s=cond.for_duration.ToNanoseconds() / 1e9,
        window_s=window,
        quantile=quantile,
        denominator=denominator,
        group_by=tuple(cond.group_by),
    )


def wanted_samples(queries: Sequence[MetricQuery], margin_s: float) -> dict[str, float]:
    """Sample names the queries read and how long to keep each (s)."""
    keep: dict[str, float] = {}

    def add(name: str, seconds: float) -> None:
        keep[name] = max(keep.get(name, 0.0), seconds)

    for q in queries:
        window = (q.window_s or 0.0) + margin_s
        add(q.bucket_metric() if q.quantile is not None else q.selector.metric, window)
        if q.denominator is not None:
            add(q.denominator.metric, window)
    return keep


def _group(labels: Mapping[str, str], by: Sequence[str]) -> tuple[str, dict[str, str]]:
    picked = {k: labels[k] for k in by if labels.get(k)}
    return series_key(picked), picked


def _summed(history: SeriesHistory, metric: str, matchers: Sequence[Matcher], q: MetricQuery, now: float,
            by: Sequence[str]) -> dict[str, tuple[dict[str, str], float]]:
    """``sum by (by) (rate(metric{matchers}[w]))`` (or of instant values without a window)."""
    out: dict[str, tuple[dict[str, str], float]] = {}
    for series in history.select(metric, matchers):
        value = (history.rate(series, q.window_s, now) if q.window_s is not None
                 else history.instant(series, now))
        if value is None:
            continue
        key, labels = _group(series.labels, by)
        prev = out.get(key)
        out[key] = (labels, value if prev is None else prev[1] + value)
    return out


def evaluate_query(q: MetricQuery, history: SeriesHistory, now: float) -> list[GroupValue]:
    """One value per group with data (see the module docstring)."""
    sel = q.selector
    if q.quantile is not None:
        histograms: dict[str, tuple[dict[str, str], dict[float, float]]] = {}
        by_le = _summed(history, q.bucket_metric(), sel.matchers, q, now, (*q.group_by, "le"))
        for labels_le, rate in by_le.values():
            try:
                le = float(labels_le.get("le", ""))
            except ValueError:
                continue
            labels = {k: v for k, v in labels_le.items() if k != "le"}
            buckets = histograms.setdefault(series_key(labels), (labels, {}))[1]
            buckets[le] = buckets.get(le, 0.0) + rate
        result = []
        for key, (labels, buckets) in sorted(histograms.items()):
            value = bucket_quantile(q.quantile, buckets)
            if value is not None:
                result.append(GroupValue(key, labels, value))
        return result
    if q.denominator is not None:
        numerator = _summed(history, sel.metric, sel.matchers, q, now, q.group_by)
        den = q.denominator
        denominator = _summed(history, den.metric, den.matchers, q, now, q.group_by)
        result = []
        for key, (labels, total) in sorted(denominator.items()):
            if total > 0:
                part = numerator.get(key, (labels, 0.0))[1]
                result.append(GroupValue(key, labels, part / total))
        return result
    if q.group_by:
        summed = _summed(history, sel.metric, sel.matchers, q, now, q.group_by)
        return [GroupValue(k, labels, v) for k, (labels, v) in sorted(summed.items())]
    result = []
    for series in history.select(sel.metric, sel.matchers):
        value = (history.rate(series, q.window_s, now) if q.window_s is not None
                 else history.instant(series, now))
        if value is not None and not math.isnan(value):
            result.append(GroupValue(series_key(series.labels), dict(series.labels), value))
    return sorted(result, key=lambda g: g.key)


def describe(q: MetricQuery) -> str:
    """The query in PromQL, e.g. ``histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m])))``."""
    def window() -> str:
        assert q.window_s is not None
        return f"{q.window_s:g}s"

    by = f" by ({', '.join(q.group_by)})" if q.group_by else ""
    if q.quantile is not None:
        inner = ", ".join(("le", *q.group_by))
        bucket = Selector(q.bucket_metric(), q.selector.matchers).text()
        expr = f"histogram_quantile({q.quantile:g}, sum by ({inner}) (rate({bucket}[{window()}])))"
    elif q.denominator is not None:
        expr = (f"sum{by} (rate({q.selector.text()}[{window()}])) / "
                f"sum{by} (rate({q.denominator.text()}[{window()}]))")
    else:
        expr = q.selector.text() if q.window_s is None else f"rate({q.selector.text()}[{window()}])"
        if q.group_by:
            expr = f"sum{by} ({expr})"
    symbol = COMPARISONS[q.comparison][0]
    return f"{expr} {symbol} {q.threshold:g}"


class MetricRuleState:
    """Since when each (rule, group) has held, for ``for_duration``."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str], float] = {}

    def holding(self, rule: str, q: MetricQuery, values: Sequence[GroupValue], now: float
                ) -> list[tuple[GroupValue, float]]:
        """(group, held since) for each group whose comparison holds now."""
        compare = COMPARISONS[q.comparison][1]
        held = []
        keep = set()
        for g in values:
            if compare(g.value, q.threshold):
                since = self._since.setdefault((rule, g.key), now)
                keep.add((rule, g.key))
                held.append((g, since))
        for key in [k for k in self._since if k[0] == rule and k not in keep]:
            del self._since[key]
        return held

    def forget(self, rules: set[str]) -> None:
        """Drop the state of rules that are gone or disabled."""
        for key in [k for k in self._since if k[0] not in rules]:
            del self._since[key]
