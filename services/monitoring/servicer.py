"""MonitoringService servicer: thin proto ↔ domain mapping.

Request validation (buf.validate rules) happens in the shared ValidationInterceptor;
domain errors (:mod:`services.shared.errors`) become rich statuses in the shared
ErrorInterceptor; the shared StreamEndInterceptor adds the final ``stream_end`` message
and ends open watch streams with UNAVAILABLE when the server begins shutting down. Methods the service cannot serve for real are left to the generated
base class, which answers UNIMPLEMENTED.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable

import grpc.aio
import httpx
from google.protobuf import empty_pb2

from agentforge.monitoring.v1 import (
    alert_pb2,
    alert_rule_pb2,
    health_pb2,
    monitoring_service_pb2_grpc,
    request_response_pb2 as rr,
)
from services.monitoring.alerts import AlertManager
from services.monitoring.convert import component_to_proto, method_stats_to_proto, system_health
from services.monitoring.health import Kind, UnknownComponent
from services.monitoring.paging import page
from services.monitoring.promtext import method_stats, pick_baseline
from services.monitoring.watcher import HealthWatcher
from services.shared import revocation
from services.shared.authz import current_principal
from services.shared.errors import FailedPrecondition, NotFound, Unavailable
from services.shared.fanout import Gap

__all__ = ["DEFAULT_WATCH_INTERVAL_S", "MonitoringServicer"]

#: Periodic snapshot interval of WatchSystemHealth when the request sets none.
DEFAULT_WATCH_INTERVAL_S = 30.0


class MonitoringServicer(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    """Health from the :class:`HealthWatcher`, alerts from the :class:`AlertManager`."""

    def __init__(self, watcher: HealthWatcher, alerts: AlertManager) -> None:
        self._watcher = watcher
        self._alerts = alerts

    # -- health ----------------------------------------------------------------------
    def _snapshot(self, kinds: set[Kind], changed: Iterable[str] = ()) -> health_pb2.SystemHealth:
        status, components = self._watcher.system(kinds)
        return system_health(status, components, self._watcher.now(), changed)

    async def GetSystemHealth(  # noqa: N802
        self, request: rr.GetSystemHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.SystemHealth:
        return self._snapshot({Kind(k) for k in request.kinds})

    async def GetComponentHealth(  # noqa: N802
        self, request: rr.GetComponentHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.ComponentHealth:
        try:
            component = self._watcher.book.get(request.name)
        except UnknownComponent:
            raise NotFound(f"no component {request.name}", reason="COMPONENT_NOT_FOUND",
                           metadata={"name": request.name}) from None
        return component_to_proto(component, self._watcher.now())

    async def WatchSystemHealth(  # noqa: N802
        self, request: rr.WatchSystemHealthRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.SystemHealth]:
        kinds = {Kind(k) for k in request.kinds}
        interval = (request.interval.ToNanoseconds() / 1e9 if request.HasField("interval")
                    else DEFAULT_WATCH_INTERVAL_S)
        async with self._watcher.subscribe() as watcher:
            yield self._snapshot(kinds)
            next_periodic = time.monotonic() + interval
            while True:
                got = await watcher.get(max(0.0, next_periodic - time.monotonic()))
                if isinstance(got, Gap):  # fell behind: the full snapshot says it all
                    yield self._snapshot(kinds)
                    next_periodic = time.monotonic() + interval
                    continue
                changes = [change for _key, change in got or ()]
                changed = {c.component.name for c in changes if not kinds or c.component.kind in kinds}
                if changes and not changed and time.monotonic() < next_periodic:
                    continue  # only components outside ``kinds`` changed
                yield self._snapshot(kinds, changed)
                next_periodic = time.monotonic() + interval

    # -- method metrics --------------------------------------------------------------
    async def ListMethodMetrics(  # noqa: N802
        self, request: rr.ListMethodMetricsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListMethodMetricsResponse:
        service = request.parent.removeprefix("services/")
        config = self._watcher.config
        if service == "-":
            names = [t.name for t in config.targets if t.name in self._watcher.scrapers]
        else:
            if config.target(service) is None:
                raise NotFound(f"no service {request.parent} is watched", reason="SERVICE_NOT_FOUND",
                               metadata={"parent": request.parent})
            if service not in self._watcher.scrapers:
                raise FailedPrecondition(
                    f"{request.parent} has no metrics endpoint configured "
                    f"(AF_{service.upper()}_METRICS_ADDR)", reason="METRICS_NOT_CONFIGURED")
            names = [service]
        entries = []
        for name in names:
            scraper = self._watcher.scrapers[name]
            try:
                scrape = await scraper.scrape()
            except (httpx.HTTPError, ValueError) as exc:
                raise Unavailable(f"metrics of services/{name} unreachable at {scraper.address}: {exc}",
                                  reason="METRICS_UNAVAILABLE") from exc
            baseline = pick_baseline(scraper.before(scrape), scrape.time, config.error_window_s)
            entries += [method_stats_to_proto(name, s) for s in method_stats(scrape, baseline)]
        items, token = page(entries, request.page_size, request.page_token)
        return rr.ListMethodMetricsResponse(method_metrics=items, next_page_token=token)

    # -- alert rules -----------------------------------------------------------------
    async def CreateAlertRule(  # noqa: N802
        self, request: rr.CreateAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> alert_rule_pb2.AlertRule:
        return await self._alerts.create_rule(request.alert_rule, request.alert_rule_id, request.request_id)

    async def GetAlertRule(  # noqa: N802
        self, request: rr.GetAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> alert_rule_pb2.AlertRule:
        return await self._alerts.get_rule(request.name)

    async def ListAlertRules(  # noqa: N802
        self, request: rr.ListAlertRulesRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListAlertRulesResponse:
        items, token = page(await self._alerts.list_rules(), request.page_size, request.page_token)
        return rr.ListAlertRulesResponse(alert_rules=items, next_page_token=token)

    async def UpdateAlertRule(  # noqa: N802
        self, request: rr.UpdateAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> alert_rule_pb2.AlertRule:
        return await self._alerts.update_rule(request.alert_rule, list(request.update_mask.paths))

    async def DeleteAlertRule(  # noqa: N802
        self, request: rr.DeleteAlertRuleRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._alerts.delete_rule(request.name)
        return empty_pb2.Empty()

    # -- alerts ----------------------------------------------------------------------
    async def ListAlerts(  # noqa: N802
        self, request: rr.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListAlertsResponse:
        alerts = await self._alerts.list_alerts(set(request.states), set(request.severities), request.rule)
        items, token = page(alerts, request.page_size, request.page_token)
        return rr.ListAlertsResponse(alerts=items, next_page_token=token)

    async def GetAlert(  # noqa: N802
        self, request: rr.GetAlertRequest, context: grpc.aio.ServicerContext
    ) -> alert_pb2.Alert:
        return await self._alerts.get_alert(request.name)

    async def AcknowledgeAlert(  # noqa: N802
        self, request: rr.AcknowledgeAlertRequest, context: grpc.aio.ServicerContext
    ) -> alert_pb2.Alert:
        return await self._alerts.acknowledge(request.name, request.acknowledged_by, request.comment)

    # -- tokens ------------------------------------------------------------------------
    async def RevokeToken(  # noqa: N802
        self, request: rr.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> rr.RevokedToken:
        """Put the ``jti`` on the mesh's revocation list (services/shared/revocation.py)."""
        revocations = revocation.process_list()
        if revocations is None:
            raise Unavailable("this deployment has no revocation list (the services run without REDIS_URL)",
                              reason="DEPENDENCY_UNAVAILABLE", metadata={"dependency": "redis"})
        expires_at = (request.expire_time.ToNanoseconds() / 1e9) if request.HasField("expire_time") else None
        kept = await revocations.revoke(request.jti, expires_at)
        principal = current_principal()
        out = rr.RevokedToken(jti=request.jti, revoked_by=principal.subject if principal else "",
                              reason=request.reason)
        out.expire_time.FromNanoseconds(int(kept * 1e9))
        out.revoke_time.GetCurrentTime()
        return out

    async def WatchAlerts(  # noqa: N802
        self, request: rr.WatchAlertsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[alert_pb2.AlertEvent]:
        severities = set(request.severities)
        async for event in self._alerts.follow(request.cursor):
            if not severities or event.alert.severity in severities:
                yield event
