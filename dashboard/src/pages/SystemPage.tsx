/** System: the live health of every component, from WatchSystemHealth. */
import { useState } from "react";
import { MonitoringService } from "@gen/agentforge/monitoring/v1/monitoring_service_pb";
import { ComponentKind, HealthStatus, type SystemHealth } from "@gen/agentforge/monitoring/v1/health_pb";
import { durationMs, enumLabel, formatDuration, formatTime, ProblemView, StreamBadge, tsToDate } from "../components/common";
import { useClient, useResumableStream } from "../hooks/hooks";

const STATUS_CLASS: Record<number, string> = {
  [HealthStatus.SERVING]: "ok",
  [HealthStatus.DEGRADED]: "warn",
  [HealthStatus.NOT_SERVING]: "bad",
  [HealthStatus.UNKNOWN]: "unknown",
};

export function statusLabel(s: HealthStatus): string {
  return enumLabel(HealthStatus, s, "").replace("not serving", "not serving");
}

export function SystemPage() {
  const monitoring = useClient(MonitoringService);
  const [health, setHealth] = useState<SystemHealth | null>(null);
  const [received, setReceived] = useState<Date | null>(null);
  const status = useResumableStream<SystemHealth>(
    () => ({
      open: (_cursor, signal) => monitoring.watchSystemHealth({}, { signal }),
      end: (m) => (m.streamEnd ? { code: m.streamEnd.code, message: m.streamEnd.message } : null),
      onMessages: (batch) => {
        setHealth(batch[batch.length - 1]);
        setReceived(new Date());
      },
    }),
    [monitoring],
  );
  const overall = health?.status ?? HealthStatus.UNKNOWN;
  return (
    <section aria-labelledby="system-title">
      <h1 id="system-title">System</h1>
      <p>
        Overall:{" "}
        <span className={`status ${STATUS_CLASS[overall] ?? "unknown"}`} data-overall-status={HealthStatus[overall]}>
          {statusLabel(overall)}
        </span>{" "}
        <StreamBadge state={status.state} reconnects={status.reconnects} />{" "}
        <span className="muted">
          {health ? `snapshot ${formatTime(health.checkTime)}` : "waiting for the first snapshot…"}
          {received ? `, received ${received.toLocaleTimeString()}` : ""}
        </span>
      </p>
      <ProblemView problem={status.problem} title="Health stream interrupted" />
      <table className="grid" aria-describedby="system-title">
        <thead>
          <tr>
            <th scope="col">Component</th>
            <th scope="col">Kind</th>
            <th scope="col">Status</th>
            <th scope="col">Latency</th>
            <th scope="col">Error rate</th>
            <th scope="col">Uptime</th>
            <th scope="col">Last change</th>
            <th scope="col">Detail</th>
          </tr>
        </thead>
        <tbody>
          {(health?.components ?? []).map((c) => {
            const changed = tsToDate(c.lastChangeTime);
            return (
              <tr key={c.name} data-component={c.name.replace("components/", "")} data-status={HealthStatus[c.status]}>
                <th scope="row">{c.name.replace("components/", "")}</th>
                <td>{enumLabel(ComponentKind, c.kind, "")}</td>
                <td>
                  <span className={`status ${STATUS_CLASS[c.status] ?? "unknown"}`}>{statusLabel(c.status)}</span>
                </td>
                <td>{formatDuration(durationMs(c.latency))}</td>
                <td>{(c.errorRate * 100).toFixed(1)}%</td>
                <td>{formatDuration(durationMs(c.uptime))}</td>
                <td title={changed?.toISOString()}>{changed ? changed.toLocaleTimeString() : "—"}</td>
                <td className="detail">
                  {c.message || <span className="muted">{c.endpoint}</span>}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </section>
  );
}
