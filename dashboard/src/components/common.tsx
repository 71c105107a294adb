import type { ReactNode } from "react";
import type { Timestamp, Duration } from "@bufbuild/protobuf/wkt";
import type { Problem } from "../api/errors";

/** An error as a person can act on it: what happened, why, what to do. */
export function ProblemView({ problem, title }: { problem: Problem | null; title?: string }) {
  if (!problem) return null;
  const fields = Object.entries(problem.fields);
  return (
    <div className="problem" role="alert">
      <strong>{title ?? "The server refused this"}</strong>{" "}
      <code>{problem.codeName}</code>: {problem.message}
      {problem.reason ? <div>Reason: <code>{problem.reason}</code></div> : null}
      {problem.hint ? <div className="hint" data-hint="">What to do: {problem.hint}</div> : null}
      {fields.length ? (
        <ul>
          {fields.map(([path, msgs]) => (
            <li key={path}>
              <code>{path || "(request)"}</code>: {msgs.join("; ")}
            </li>
          ))}
        </ul>
      ) : null}
      {problem.hint ? <div className="hint">{problem.hint}</div> : null}
    </div>
  );
}

/** A form field with its label and the server's violations next to it. */
export function Field({
  id,
  label,
  errors,
  children,
  help,
}: {
  id: string;
  label: string;
  errors: string[];
  children: ReactNode;
  help?: string;
}) {
  return (
    <div className={`field${errors.length ? " invalid" : ""}`}>
      <label htmlFor={id}>{label}</label>
      {children}
      {help ? <small id={`${id}-help`} className="muted">{help}</small> : null}
      {errors.length ? (
        <div className="field-error" id={`${id}-error`} role="alert" data-field-error={id}>
          {errors.join("; ")}
        </div>
      ) : null}
    </div>
  );
}

export function tsToDate(ts: Timestamp | undefined): Date | null {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
}

export function formatTime(ts: Timestamp | undefined): string {
  const d = tsToDate(ts);
  return d ? d.toLocaleString() : "—";
}

export function durationMs(d: Duration | undefined): number | null {
  if (!d) return null;
  return Number(d.seconds) * 1000 + d.nanos / 1e6;
}

export function formatDuration(ms: number | null): string {
  if (ms === null) return "—";
  if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** `TRAINING_JOB_STATE_RUNNING` → `running`, from an enum's value name. */
export function enumLabel(names: Record<number, string>, value: number, prefix: string): string {
  const name = names[value] ?? String(value);
  return name.replace(prefix, "").toLowerCase().replace(/_/g, " ");
}

export function StreamBadge({ state, reconnects }: { state: string; reconnects: number }) {
  return (
    <span className={`badge stream-${state}`} data-stream-state={state} data-reconnects={reconnects} aria-live="polite">
      stream {state}
      {reconnects ? ` (reconnected ${reconnects}×)` : ""}
    </span>
  );
}
