/** Alerts: the live list (ListAlerts, then WatchAlerts from its cursor), acknowledge. */
import { useState } from "react";
import { MonitoringService } from "@gen/agentforge/monitoring/v1/monitoring_service_pb";
import { AlertSeverity, AlertState, type Alert, type AlertEvent } from "@gen/agentforge/monitoring/v1/alert_pb";
import { describeError, type Problem } from "../api/errors";
import { enumLabel, formatTime, ProblemView, StreamBadge } from "../components/common";
import { useAuth, useClient, useResumableStream } from "../hooks/hooks";

export function AlertsPage() {
  const monitoring = useClient(MonitoringService);
  const auth = useAuth();
  const [alerts, setAlerts] = useState<Map<string, Alert>>(new Map());
  const [problem, setProblem] = useState<Problem | null>(null);
  const [showResolved, setShowResolved] = useState(false);
  const stream = useResumableStream<AlertEvent>(
    () => ({
      // The stream starts with the retained history, then follows live changes.
      open: (cursor, signal) => monitoring.watchAlerts({ cursor }, { signal }),
      position: (e) => (e.cursor ? { sequence: e.sequence, cursor: e.cursor } : null),
      keepalive: (e) => e.heartbeat !== undefined,
      end: (e) => (e.streamEnd ? { code: e.streamEnd.code, message: e.streamEnd.message } : null),
      onMessages: (batch) =>
        setAlerts((prev) => {
          const next = new Map(prev);
          for (const e of batch) if (e.alert) next.set(e.alert.name, e.alert);
          return next;
        }),
    }),
    [monitoring],
  );
  const ack = async (a: Alert) => {
    setProblem(null);
    try {
      const updated = await monitoring.acknowledgeAlert({ name: a.name, acknowledgedBy: auth.info?.subject ?? "dashboard" });
      setAlerts((prev) => new Map(prev).set(updated.name, updated));
    } catch (err) {
      setProblem(describeError(err));
    }
  };
  const rows = [...alerts.values()]
    .filter((a) => showResolved || a.state !== AlertState.RESOLVED)
    .sort((a, b) => b.severity - a.severity || Number((b.fireTime?.seconds ?? 0n) - (a.fireTime?.seconds ?? 0n)));
  return (
    <section aria-labelledby="alerts-title">
      <h1 id="alerts-title">Alerts</h1>
      <p>
        <StreamBadge state={stream.state} reconnects={stream.reconnects} />{" "}
        <label className="check"><input type="checkbox" checked={showResolved} onChange={(e) => setShowResolved(e.target.checked)} /> show resolved</label>
      </p>
      <ProblemView problem={stream.state === "failed" ? stream.problem : null} title="The alert stream stopped" />
      <ProblemView problem={problem} title="The alert was not acknowledged" />
      <table className="grid" id="alerts-table">
        <thead><tr><th scope="col">Alert</th><th scope="col">Severity</th><th scope="col">State</th><th scope="col">Fired</th><th scope="col">Detail</th><th scope="col"><span className="muted">Action</span></th></tr></thead>
        <tbody>
          {rows.map((a) => (
            <tr key={a.name} data-alert={a.name} data-alert-state={AlertState[a.state]}>
              <th scope="row">{a.summary || a.name}</th>
              <td><span className={`status ${a.severity === AlertSeverity.CRITICAL ? "bad" : a.severity === AlertSeverity.WARNING ? "warn" : "unknown"}`}>{enumLabel(AlertSeverity, a.severity, "")}</span></td>
              <td>{enumLabel(AlertState, a.state, "")}{a.acknowledgedBy ? ` by ${a.acknowledgedBy}` : ""}</td>
              <td>{formatTime(a.fireTime)}</td>
              <td className="detail">{a.description}</td>
              <td><button type="button" disabled={a.state !== AlertState.FIRING} onClick={() => ack(a)}>Acknowledge</button></td>
            </tr>
          ))}
          {rows.length === 0 ? <tr><td colSpan={6} className="muted">No alerts{showResolved ? "" : " firing"}.</td></tr> : null}
        </tbody>
      </table>
    </section>
  );
}
