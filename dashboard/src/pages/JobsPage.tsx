/** Training jobs: list with filters and paging, and the create form. */
import { useState } from "react";
import { TrainingService } from "@gen/agentforge/training/v1/training_service_pb";
import { TrainingJobState, type TrainingJob } from "@gen/agentforge/training/v1/training_job_pb";
import { enumLabel, formatTime, ProblemView } from "../components/common";
import { useClient, useUnary } from "../hooks/hooks";
import { CreateJobForm } from "./CreateJobForm";

const FILTER_STATES = [
  TrainingJobState.QUEUED,
  TrainingJobState.RUNNING,
  TrainingJobState.PAUSED,
  TrainingJobState.SUCCEEDED,
  TrainingJobState.FAILED,
  TrainingJobState.CANCELLED,
];

export function stateLabel(s: TrainingJobState): string {
  return enumLabel(TrainingJobState, s, "");
}

export function JobsPage() {
  const training = useClient(TrainingService);
  const [states, setStates] = useState<TrainingJobState[]>([]);
  const [phase, setPhase] = useState("");
  const [labels, setLabels] = useState("");
  const [applied, setApplied] = useState({ states: [] as TrainingJobState[], phase: "", labels: "" });
  const [pageSize, setPageSize] = useState(20);
  // Tokens of the pages before the current one; the current token is the last.
  const [tokens, setTokens] = useState<string[]>([""]);
  const token = tokens[tokens.length - 1];
  const list = useUnary(
    (signal) =>
      training.listTrainingJobs(
        { pageSize, pageToken: token, states: applied.states, phase: applied.phase, labelSelector: applied.labels },
        { signal },
      ),
    [training, token, pageSize, applied],
  );

  const apply = (e: React.FormEvent) => {
    e.preventDefault();
    setApplied({ states, phase: phase.trim(), labels: labels.trim() });
    setTokens([""]);
  };

  return (
    <section aria-labelledby="jobs-title">
      <h1 id="jobs-title">Training jobs</h1>
      <CreateJobForm onCreated={(job: TrainingJob) => (window.location.hash = `#/jobs/${job.name.split("/")[1]}`)} />
      <h2>All jobs</h2>
      <form className="filters" onSubmit={apply} aria-label="Filter jobs">
        <fieldset>
          <legend>State</legend>
          {FILTER_STATES.map((s) => (
            <label key={s} className="check">
              <input
                type="checkbox"
                checked={states.includes(s)}
                onChange={(e) => setStates(e.target.checked ? [...states, s] : states.filter((x) => x !== s))}
              />
              {stateLabel(s)}
            </label>
          ))}
        </fieldset>
        <label>
          Phase <input value={phase} onChange={(e) => setPhase(e.target.value)} placeholder="phases/cognate" />
        </label>
        <label>
          Labels <input value={labels} onChange={(e) => setLabels(e.target.value)} placeholder="team=a,run=b" />
        </label>
        <label>
          Per page{" "}
          <select value={pageSize} onChange={(e) => { setPageSize(Number(e.target.value)); setTokens([""]); }}>
            {[10, 20, 50, 100].map((n) => <option key={n} value={n}>{n}</option>)}
          </select>
        </label>
        <button type="submit">Apply filters</button>
      </form>
      <ProblemView problem={list.problem} title="Could not list jobs" />
      <table className="grid" id="jobs-table" aria-busy={list.loading}>
        <thead>
          <tr>
            <th scope="col">Job</th>
            <th scope="col">State</th>
            <th scope="col">Progress</th>
            <th scope="col">Loss</th>
            <th scope="col">Phase</th>
            <th scope="col">Created</th>
          </tr>
        </thead>
        <tbody>
          {(list.data?.trainingJobs ?? []).map((job) => {
            const id = job.name.split("/")[1];
            return (
              <tr key={job.name} data-job={id} data-state={TrainingJobState[job.state]}>
                <th scope="row">
                  <a href={`#/jobs/${id}`}>{job.displayName || id}</a>
                </th>
                <td><span className={`state state-${TrainingJobState[job.state]?.toLowerCase()}`}>{stateLabel(job.state)}</span></td>
                <td>
                  {job.progress ? `${job.progress.step} / ${job.progress.totalSteps || job.spec?.maxSteps}` : "—"}
                </td>
                <td>{job.progress?.trainLoss ? job.progress.trainLoss.toFixed(4) : "—"}</td>
                <td>{job.phase || "—"}</td>
                <td>{formatTime(job.createTime)}</td>
              </tr>
            );
          })}
          {list.data && list.data.trainingJobs.length === 0 ? (
            <tr><td colSpan={6} className="muted">No jobs match.</td></tr>
          ) : null}
        </tbody>
      </table>
      <nav className="pager" aria-label="Pages">
        <button type="button" disabled={tokens.length < 2} onClick={() => setTokens(tokens.slice(0, -1))}>
          Previous page
        </button>
        <span className="muted">page {tokens.length}</span>
        <button
          type="button"
          disabled={!list.data?.nextPageToken}
          onClick={() => list.data && setTokens([...tokens, list.data.nextPageToken])}
        >
          Next page
        </button>
        <button type="button" onClick={list.reload}>Refresh</button>
      </nav>
    </section>
  );
}
