/** Phase runs: the catalog, start a phase with its parameters, watch a run's steps and jobs. */
import { useState } from "react";
import { ForgeService } from "@gen/agentforge/forge/v1/forge_service_pb";
import { toJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { ParameterType, type Phase } from "@gen/agentforge/forge/v1/phase_pb";
import { PhaseRunState, SagaStepState, type PhaseRun } from "@gen/agentforge/forge/v1/phase_run_pb";
import type { PhaseRunEvent } from "@gen/agentforge/forge/v1/phase_run_event_pb";
import { describeError, unplacedViolations, type Problem } from "../api/errors";
import { enumLabel, Field, formatTime, ProblemView, StreamBadge } from "../components/common";
import { useClient, useResumableStream, useUnary } from "../hooks/hooks";

const idOf = (name: string) => name.split("/").pop() ?? name;

export function PhasesPage() {
  const forge = useClient(ForgeService);
  const phases = useUnary((signal) => forge.listPhases({ pageSize: 100 }, { signal }), [forge]);
  const runs = useUnary((signal) => forge.listPhaseRuns({ pageSize: 20 }, { signal }), [forge]);
  const [selected, setSelected] = useState<Phase | null>(null);
  return (
    <section aria-labelledby="phases-title">
      <h1 id="phases-title">Phase runs</h1>
      <h2>Catalog</h2>
      <ProblemView problem={phases.problem} title="Could not list the phases" />
      <table className="grid" id="phases-table">
        <thead><tr><th scope="col">Phase</th><th scope="col">What it does</th><th scope="col">Needs</th><th scope="col">Available</th><th scope="col"><span className="muted">Action</span></th></tr></thead>
        <tbody>
          {(phases.data?.phases ?? []).map((p) => (
            <tr key={p.name} data-phase={idOf(p.name)}>
              <th scope="row">{p.displayName || idOf(p.name)}</th>
              <td>{p.description}</td>
              <td>{p.prerequisites.map(idOf).join(", ") || "—"}</td>
              <td>{p.available ? "yes" : "no"}</td>
              <td><button type="button" onClick={() => setSelected(p)} disabled={!p.available}>Start…</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      {selected ? <StartPhaseForm key={selected.name} phase={selected} /> : null}
      <h2>Recent runs</h2>
      <ProblemView problem={runs.problem} title="Could not list the runs" />
      <table className="grid" id="phase-runs-table">
        <thead><tr><th scope="col">Run</th><th scope="col">Phase</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Created</th></tr></thead>
        <tbody>
          {(runs.data?.phaseRuns ?? []).map((r) => (
            <tr key={r.name} data-run={idOf(r.name)}>
              <th scope="row"><a href={`#/phaseRuns/${idOf(r.name)}`}>{idOf(r.name)}</a></th>
              <td>{idOf(r.phase)}</td>
              <td>{enumLabel(PhaseRunState, r.state, "")}</td>
              <td>{r.progress ? `${Math.round(r.progress.fractionDone * 100)}% ${r.progress.message}` : "—"}</td>
              <td>{formatTime(r.createTime)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <button type="button" onClick={runs.reload}>Refresh</button>
    </section>
  );
}

function parseParam(type: ParameterType, raw: string): JsonValue | undefined {
  const text = raw.trim();
  if (text === "") return undefined;
  switch (type) {
    case ParameterType.INTEGER:
    case ParameterType.NUMBER: {
      const n = Number(text);
      return Number.isFinite(n) ? n : text; // the server names a non-number
    }
    case ParameterType.BOOLEAN:
      return text === "true";
    case ParameterType.LIST:
    case ParameterType.OBJECT:
      try {
        return JSON.parse(text) as JsonValue;
      } catch {
        return text;
      }
    default:
      return text;
  }
}

/** A parameter's default as the text in its input: strings bare, the rest as JSON. */
function showDefault(v: Value | undefined): string {
  if (!v?.kind.case || v.kind.case === "nullValue") return "";
  const json = toJson(ValueSchema, v);
  return typeof json === "string" ? json : JSON.stringify(json);
}

function StartPhaseForm({ phase }: { phase: Phase }) {
  const forge = useClient(ForgeService);
  const [values, setValues] = useState<Record<string, string>>(() =>
    Object.fromEntries(phase.parameters.map((p) => [p.name, showDefault(p.defaultValue)])),
  );
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    const parameters: JsonObject = {};
    for (const spec of phase.parameters) {
      const v = parseParam(spec.type, values[spec.name] ?? "");
      if (v !== undefined) parameters[spec.name] = v;
    }
    setBusy(true);
    setProblem(null);
    try {
      const run: PhaseRun = await forge.startPhaseRun({ phase: phase.name, parameters, requestId: crypto.randomUUID() });
      window.location.hash = `#/phaseRuns/${idOf(run.name)}`;
    } catch (err) {
      setProblem(describeError(err));
    } finally {
      setBusy(false);
    }
  };
  const placed = phase.parameters.map((p) => `parameters.${p.name}`);
  return (
    <form className="card" onSubmit={submit} noValidate aria-label={`Start ${phase.displayName || idOf(phase.name)}`} id="start-phase-form">
      <h2>Start {phase.displayName || idOf(phase.name)}</h2>
      {problem ? <ProblemView problem={{ ...problem, fields: Object.fromEntries(unplacedViolations(problem, placed).map(([p, m]) => [p, [m]])) }} title="The run was not started" /> : null}
      <div className="form-grid">
        {phase.parameters.map((spec) => {
          const id = `param-${spec.name}`;
          const errors = problem?.fields[`parameters.${spec.name}`] ?? problem?.fields[`parameters["${spec.name}"]`] ?? [];
          return (
            <Field key={spec.name} id={id} label={`${spec.name}${spec.required ? " (required)" : ""}`} errors={errors}
              help={`${enumLabel(ParameterType, spec.type, "")}: ${spec.description}`}>
              <input id={id} value={values[spec.name] ?? ""} aria-invalid={errors.length > 0} aria-describedby={`${id}-help`}
                onChange={(e) => setValues({ ...values, [spec.name]: e.target.value })} />
            </Field>
          );
        })}
      </div>
      <button type="submit" disabled={busy}>{busy ? "Starting…" : "Start run"}</button>
    </form>
  );
}

export function PhaseRunPage({ id }: { id: string }) {
  const forge = useClient(ForgeService);
  const name = `phaseRuns/${id}`;
  const [run, setRun] = useState<PhaseRun | null>(null);
  const [log, setLog] = useState<string[]>([]);
  const [problem, setProblem] = useState<Problem | null>(null);
  const stream = useResumableStream<PhaseRunEvent>(
    () => ({
      open: (cursor, signal) => forge.watchPhaseRun({ name, cursor }, { signal }),
      position: (e) => (e.cursor ? { sequence: e.sequence, cursor: e.cursor } : null),
      keepalive: (e) => e.kind.case === "heartbeat",
      end: (e) => (e.kind.case === "streamEnd" ? { code: e.kind.value.code, message: e.kind.value.message } : null),
      onMessages: (batch) => {
        for (const e of batch) {
          if (e.phaseRun) setRun(e.phaseRun);
          if (e.kind.case === "log") {
            const line = e.kind.value.message;
            setLog((l) => [...l.slice(-99), line]);
          }
        }
      },
    }),
    [forge, name],
  );
  const active = run && [PhaseRunState.PENDING, PhaseRunState.RUNNING].includes(run.state);
  const cancel = async () => {
    try {
      setRun(await forge.cancelPhaseRun({ name, reason: "cancelled from the dashboard" }));
    } catch (err) {
      setProblem(describeError(err));
    }
  };
  const outputs = run?.outputs;
  return (
    <section aria-labelledby="run-title">
      <p><a href="#/phases">← Phase runs</a></p>
      <h1 id="run-title">{id}</h1>
      <p>
        <StreamBadge state={stream.state} reconnects={stream.reconnects} />{" "}
        {run ? <span data-run-state={PhaseRunState[run.state]}>{idOf(run.phase)}: {enumLabel(PhaseRunState, run.state, "")}</span> : null}{" "}
        {run?.progress ? <span className="muted">{Math.round(run.progress.fractionDone * 100)}% — {run.progress.message}</span> : null}
        {run?.creator ? <span className="muted" data-creator={run.creator}> started by {run.creator}</span> : null}
      </p>
      {run?.progress ? <progress max={1} value={run.progress.fractionDone} aria-label="Run progress" /> : null}
      <ProblemView problem={stream.state === "failed" ? stream.problem : null} title="The live stream stopped" />
      <ProblemView problem={problem} title="The run did not accept this" />
      {run?.error?.message ? <div className="problem" role="alert">Failed: {run.error.message}</div> : null}
      <button type="button" disabled={!active} onClick={cancel}>Cancel run</button>
      <h2>Steps</h2>
      <table className="grid" id="steps-table">
        <thead><tr><th scope="col">Step</th><th scope="col">State</th><th scope="col">Resource</th><th scope="col">Started</th><th scope="col">Ended</th><th scope="col">Error</th></tr></thead>
        <tbody>
          {(run?.steps ?? []).map((s) => (
            <tr key={s.name} data-step={s.name} data-step-state={SagaStepState[s.state]}>
              <th scope="row">{s.name}</th>
              <td>{enumLabel(SagaStepState, s.state, "")}</td>
              <td>{s.resource.startsWith("trainingJobs/") ? <a href={`#/jobs/${idOf(s.resource)}`}>{s.resource}</a> : s.resource || "—"}</td>
              <td>{formatTime(s.startTime)}</td>
              <td>{formatTime(s.endTime)}</td>
              <td>{s.error?.message ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {outputs && (outputs.trainingJob || outputs.modelVersion) ? (
        <p>
          Outputs:{" "}
          {outputs.trainingJob ? <a href={`#/jobs/${idOf(outputs.trainingJob)}`}>{outputs.trainingJob}</a> : null}{" "}
          {outputs.modelVersion ? <a href={`#/models/${outputs.modelVersion.split("/")[1]}`}>{outputs.modelVersion}</a> : null}
        </p>
      ) : null}
      {log.length ? (<><h2>Log</h2><pre className="log">{log.join("\n")}</pre></>) : null}
    </section>
  );
}
