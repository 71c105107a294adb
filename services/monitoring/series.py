"""Time series of scraped Prometheus samples and the PromQL functions metric rules use.

Pure logic with an injectable clock; no PromQL parser. Prometheus itself is not part of
the mesh, and no maintained Python library evaluates PromQL over in-process samples
(the Python packages around PromQL are HTTP clients of a Prometheus server), so the few
functions the alert rules need are implemented here, after the Prometheus sources:

* :func:`extrapolated_rate` — ``rate()``: the per-second increase over a range, with
  counter resets adjusted for and the result extrapolated to the range's edges, as
  ``extrapolatedRate`` in prometheus/promql/functions.go (v2.53) does;
* :func:`bucket_quantile` — ``histogram_quantile()``: linear interpolation inside the
  bucket holding the rank, the ``+Inf`` bucket answered by the highest finite bound,
  buckets made monotonic first, as ``bucketQuantile`` in prometheus/promql/quantile.go;
* :class:`Matcher` — ``=``, ``!=``, ``=~``, ``!~`` with fully anchored regular
  expressions, a missing label matching as ``""`` (prometheus/model/labels/matcher.go).

:class:`SeriesHistory` keeps the samples of the metrics that rules select (and only
those), per series, for as long as the longest window in use needs. Every series gets
the label ``service`` (the scraped service's name), as Prometheus adds ``job``.

Staleness: an instant value (a gauge compared as is) is the series' sample from the
service's latest successful scrape; a series missing from that scrape is stale (as
Prometheus' staleness markers make it) and a scrape older than ``lookback_s`` (5 min,
Prometheus' default lookback delta) is too old to answer.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import re2

__all__ = [
    "LOOKBACK_S",
    "MatchType",
    "Matcher",
    "RegexError",
    "Sample",
    "SeriesHistory",
    "bucket_quantile",
    "compile_regex",
    "extrapolated_rate",
    "series_key",
]

#: Prometheus' default ``--query.lookback-delta``.
LOOKBACK_S = 300.0

#: One sample of a scrape: (name, labels, value).
Sample = tuple[str, Mapping[str, str], float]
LabelKey = tuple[tuple[str, str], ...]


class MatchType(IntEnum):
    """Same numbers as ``agentforge.monitoring.v1.LabelMatchType``."""

    EQUAL = 1
    NOT_EQUAL = 2
    REGEX = 3
    NOT_REGEX = 4


class RegexError(ValueError):
    """A label matcher's value is not an RE2 regular expression (the message says why)."""


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.dot_nl = True  # Prometheus anchors and compiles "^(?s:" + v + ")$"
    options.log_errors = False  # the error goes to the caller, not to stderr
    return options


_RE2_OPTIONS = _re2_options()


def compile_regex(value: str) -> re2._Regexp:
    """``value`` as Prometheus compiles a matcher's: RE2 syntax (github.com/google/re2,
    what Go's regexp implements), ``.`` matching newlines. RE2 runs in time linear in
    the input, so no pattern an operator stores can stall the evaluation loop
    (Python's ``re`` backtracks: ``([a-z.]+)+x`` against a 38-character label takes
    hours). Raises :class:`RegexError` for a bad expression."""
    try:
        return re2.compile(value, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        raise RegexError(reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)) from None


@dataclass(frozen=True, slots=True)
class Matcher:
    """One PromQL label matcher. Raises :class:`RegexError` for a bad regular expression."""

    name: str
    type: MatchType
    value: str
    _regex: re2._Regexp | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, name: str, type: MatchType, value: str) -> Matcher:
        regex = compile_regex(value) if type in (MatchType.REGEX, MatchType.NOT_REGEX) else None
        return cls(name, type, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.type is MatchType.EQUAL:
            return actual == self.value
        if self.type is MatchType.NOT_EQUAL:
            return actual != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(actual) is not None
        return hit if self.type is MatchType.REGEX else not hit


def series_key(labels: Mapping[str, str]) -> str:
    """Canonical text of a label set, e.g. ``{grpc_method="Get",service="model"}``."""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# --------------------------------------------------------------------------- functions
def extrapolated_rate(points: Sequence[tuple[float, float]], range_start: float, range_end: float,
                      *, is_counter: bool = True, is_rate: bool = True) -> float | None:
    """PromQL ``rate()`` (``is_rate``) or ``increase()`` of ``points`` in the range.

    ``points`` are (unix seconds, value) inside ``[range_start, range_end]``, oldest
    first. None with fewer than two points (Prometheus returns no sample then).
    """
    if len(points) < 2:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result = last_v - first_v
    if is_counter:
        prev = first_v
        for _t, v in points[1:]:
            if v < prev:  # counter reset: the counter restarted from 0
                result += prev
            prev = v
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    average_between = sampled / (len(points) - 1)
    threshold = average_between * 1.1
    to_start = first_t - range_start
    to_end = range_end - last_t
    if to_start >= threshold:
        to_start = average_between / 2
    if is_counter and result > 0 and first_v >= 0:
        # The counter cannot have been below zero: don't extrapolate past that point.
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    if to_end >= threshold:
        to_end = average_between / 2
    factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= range_end - range_start
    return result * factor


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL ``histogram_quantile(q, …)`` of cumulative ``{upper bound: count}``.

    None (PromQL: NaN) without a ``+Inf`` bucket, with fewer than two buckets or with no
    observations.
    """
    if not 0 <= q <= 1:
        return None
    items = sorted(buckets.items())
    if len(items) < 2 or not math.isinf(items[-1][0]):
        return None
    # ensureMonotonic: rates of cumulative buckets can dip by float error.
    fixed: list[tuple[float, float]] = []
    high = -math.inf
    for le, count in items:
        high = max(high, count)
        fixed.append((le, high))
    total = fixed[-1][1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, (_le, count) in enumerate(fixed) if count >= rank)
    if index == len(fixed) - 1:
        return fixed[-2][0]  # the +Inf bucket: the highest finite bound
    if index == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, lower_count = (0.0, 0.0) if index == 0 else fixed[index - 1]
    end, count = fixed[index]
    in_bucket = count - lower_count
    if in_bucket <= 0:
        return end
    return start + (end - start) * (rank - lower_count) / in_bucket


# --------------------------------------------------------------------------- history
@dataclass(slots=True)
class Series:
    """One series: its name, labels (with ``service``) and recent points."""

    name: str
    labels: dict[str, str]
    points: deque[tuple[float, float]] = field(default_factory=deque)


class SeriesHistory:
    """Recent samples of the wanted metrics, per series (see the module docstring)."""

    def __init__(self, *, lookback_s: float = LOOKBACK_S, clock: Callable[[], float] = time.time) -> None:
        self._lookback = lookback_s
        self._clock = clock
        self._keep: dict[str, float] = {}
        self._series: dict[tuple[str, LabelKey], Series] = {}
        #: service -> time of its latest successful scrape
        self.scraped: dict[str, float] = {}

    def want(self, keep: Mapping[str, float]) -> None:
        """Record these sample names from now on, each for ``keep`` seconds; forget others."""
        self._keep = dict(keep)
        for key in [k for k in self._series if k[0] not in self._keep]:
            del self._series[key]

    @property
    def wanted(self) -> Mapping[str, float]:
        return self._keep

    def ingest(self, service: str, at: float, samples: Iterable[Sample]) -> None:
        """Add one scrape of ``service`` taken at ``at`` (unix seconds)."""
        self.scraped[service] = at
        if not self._keep:
            return
        for name, labels, value in samples:
            keep = self._keep.get(name)
            if keep is None:
                continue
            full = {**labels, "service": service}
            key = (name, tuple(sorted(full.items())))
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(name, full)
            points = series.points
            points.append((at, value))
            cutoff = at - keep
            while len(points) > 1 and points[0][0] < cutoff:
                points.popleft()
        # Drop series the service stopped exporting long ago.
        horizon = at - max(self._keep.values(), default=0.0) - self._lookback
        for key in [k for k, s in self._series.items() if s.labels.get("service") == service
                    and s.points[-1][0] < horizon]:
            del self._series[key]

    def select(self, name: str, matchers: Sequence[Matcher]) -> list[Series]:
        """The series of ``name`` whose labels match every matcher."""
        return [s for (n, _), s in self._series.items()
                if n == name and all(m.matches(s.labels) for m in matchers)]

    def instant(self, series: Series, now: float) -> float | None:
        """The series' value now: its sample from its service's latest scrape, if recent."""
        scraped = self.scraped.get(series.labels.get("service", ""))
        if scraped is None or not series.points or now - scraped > self._lookback:
            return None
        t, v = series.points[-1]
        return v if t >= scraped else None

    def rate(self, series: Series, window_s: float, now: float) -> float | None:
        """``rate(series[window_s])`` evaluated at ``now``."""
        start = now - window_s
        points = [p for p in series.points if start <= p[0] <= now]
        return extrapolated_rate(points, start, now)
