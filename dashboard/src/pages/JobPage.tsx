/**
 * One training job: state and controls, live charts (loss, accuracy, validation,
 * GrokFast) and checkpoints.
 *
 * The charts open with GetTrainingJobMetrics (one call, downsampled) and then follow
 * WatchTrainingJob from the cursor it returned; after a dropped connection the stream
 * reopens from the cursor of the last event applied (ResumableStream), so the series
 * get no gap and no duplicate.
 */
import { useMemo, useRef, useState } from "react";
import { TrainingService } from "@gen/agentforge/training/v1/training_service_pb";
import { TrainingJobState, type TrainingJob } from "@gen/agentforge/training/v1/training_job_pb";
import type { TrainingJobEvent } from "@gen/agentforge/training/v1/training_job_event_pb";
import { describeError, type Problem } from "../api/errors";
import { Chart } from "../components/Chart";
import { formatTime, ProblemView, StreamBadge } from "../components/common";
import { useClient, useFrame, useResumableStream, useUnary } from "../hooks/hooks";
import { JobSeries } from "../training/series";
import { stateLabel } from "./JobsPage";

const HISTORY_POINTS = 2000;
const ACTIVE = new Set([TrainingJobState.QUEUED, TrainingJobState.RUNNING, TrainingJobState.PAUSED]);

export function JobPage({ id }: { id: string }) {
  const training = useClient(TrainingService);
  const name = `trainingJobs/${id}`;
  const job = useUnary((signal) => training.getTrainingJob({ name }, { signal }), [training, name]);
  const checkpoints = useUnary((signal) => training.listCheckpoints({ parent: name, pageSize: 20 }, { signal }), [training, name]);
  const series = useMemo(() => new JobSeries(), [name]);
  const [version, setVersion] = useState(0);
  const [historyInfo, setHistoryInfo] = useState<string>("");
  const [log, setLog] = useState<string[]>([]);
  const redraw = useFrame(() => setVersion(series.version));
  const reloadJob = useRef(job.reload);
  reloadJob.current = job.reload;
  const reloadCheckpoints = useRef(checkpoints.reload);
  reloadCheckpoints.current = checkpoints.reload;

  const stream = useResumableStream<TrainingJobEvent>(() => {
    let historyLoaded = false;
    return {
      open: async function* (cursor, signal) {
        if (!historyLoaded) {
          // First open: the history in one call, then the stream from its cursor.
          const history = await training.getTrainingJobMetrics({ name: `${name}/metrics`, maxPoints: HISTORY_POINTS }, { signal });
          history.progress.forEach((p) => series.addProgress(p));
          history.evals.forEach((e) => series.addEval(e));
          setHistoryInfo(
            `history: ${history.progress.length} of ${history.progressCount} points` +
              (history.progressCount > BigInt(history.progress.length) ? " (downsampled)" : ""),
          );
          historyLoaded = true;
          redraw();
          cursor = history.cursor;
          yield* training.watchTrainingJob({ name, cursor }, { signal });
          return;
        }
        yield* training.watchTrainingJob({ name, cursor }, { signal });
      },
      position: (e) => ({ sequence: e.sequence, cursor: e.cursor }),
      keepalive: (e) => e.kind.case === "heartbeat",
      end: (e) => (e.kind.case === "streamEnd" ? { code: e.kind.value.code, message: e.kind.value.message } : null),
      onMessages: (batch) => {
        let changed = false;
        for (const e of batch) {
          changed = series.apply(e) || changed;
          if (e.kind.case === "stateChanged") reloadJob.current();
          if (e.kind.case === "checkpointWritten") reloadCheckpoints.current();
          if (e.kind.case === "log") {
            const line = e.kind.value.message;
            setLog((l) => [...l.slice(-49), line]);
          }
          if (e.kind.case === "controlApplied") {
            const c = e.kind.value;
            const parts = [
              c.learningRate !== undefined ? `lr=${c.learningRate}` : "",
              c.grokfastAlpha !== undefined ? `α=${c.grokfastAlpha}` : "",
              c.grokfastLamb !== undefined ? `λ=${c.grokfastLamb}` : "",
              c.checkpointRequested ? "checkpoint requested" : "",
            ].filter(Boolean);
            setLog((l) => [...l.slice(-49), `step ${c.step}: applied ${parts.join(", ")}`]);
          }
        }
        if (changed) redraw();
      },
    };
  }, [training, name, series]);

  const j = job.data;
  const interval = j?.spec ? Number(j.spec.progressInterval || 1n) : 1;
  const p = series.progress;
  const ev = series.evals;
  return (
    <section aria-labelledby="job-title">
      <p><a href="#/jobs">← Training jobs</a></p>
      <h1 id="job-title">{j?.displayName || id}</h1>
      <ProblemView problem={job.problem} title="Could not load the job" />
      {j ? <JobSummary job={j} /> : null}
      {j ? <JobControls job={j} onChanged={job.reload} /> : null}
      <p>
        <StreamBadge state={stream.state} reconnects={stream.reconnects} />{" "}
        <span className="muted" id="stream-info" data-duplicates={stream.duplicatesDropped} data-gaps={stream.gaps}>
          {historyInfo}
          {stream.duplicatesDropped ? `, ${stream.duplicatesDropped} duplicate events dropped` : ""}
        </span>
      </p>
      <ProblemView problem={stream.state === "failed" || stream.state === "reconnecting" ? stream.problem : null}
        title={stream.state === "failed" ? "The live stream stopped" : "Reconnecting the live stream"} />
      <div className="charts">
        <Chart id="chart-loss" title="Training loss" x={p.step} ys={[p.trainLoss]} version={version} interval={interval}
          series={[{ label: "train loss", color: "#1f5fbf" }]} />
        <Chart id="chart-accuracy" title="Training accuracy" x={p.step} ys={[p.trainAccuracy]} version={version}
          series={[{ label: "train accuracy", color: "#1a7f37" }]} />
        <Chart id="chart-validation" title="Validation" x={ev.step} ys={[ev.loss, ev.accuracy]} version={version}
          series={[{ label: "val loss", color: "#b35900" }, { label: "val accuracy", color: "#6f42c1", right: true }]} />
        <Chart id="chart-grokfast" title="GrokFast" x={p.step} ys={[p.slowGradientNorm, p.amplificationRatio]} version={version}
          series={[{ label: "slow-gradient norm", color: "#0b7285" }, { label: "amplification", color: "#c92a2a", right: true }]} />
      </div>
      <h2>Checkpoints</h2>
      <ProblemView problem={checkpoints.problem} title="Could not list checkpoints" />
      <table className="grid" id="checkpoints">
        <thead><tr><th scope="col">Step</th><th scope="col">Trigger</th><th scope="col">Size</th><th scope="col">sha256</th><th scope="col">Written</th></tr></thead>
        <tbody>
          {(checkpoints.data?.checkpoints ?? []).map((c) => (
            <tr key={c.name}>
              <th scope="row">{String(c.step)}{c.final ? " (final)" : ""}</th>
              <td>{["", "interval", "final", "requested", "pause"][c.trigger] ?? c.trigger}</td>
              <td>{(Number(c.sizeBytes) / 1024).toFixed(1)} KiB</td>
              <td><code>{c.sha256.slice(0, 12)}…</code></td>
              <td>{formatTime(c.createTime)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {log.length ? (
        <>
          <h2>Log</h2>
          <pre className="log" aria-live="off">{log.join("\n")}</pre>
        </>
      ) : null}
    </section>
  );
}

function JobSummary({ job }: { job: TrainingJob }) {
  const pr = job.progress;
  return (
    <dl className="summary" data-job-state={TrainingJobState[job.state]}>
      <div><dt>State</dt><dd><span className={`state state-${TrainingJobState[job.state]?.toLowerCase()}`}>{stateLabel(job.state)}</span></dd></div>
      <div><dt>Step</dt><dd>{pr ? `${pr.step} / ${pr.totalSteps || job.spec?.maxSteps}` : "—"}</dd></div>
      <div><dt>Speed</dt><dd>{pr?.stepsPerSecond ? `${pr.stepsPerSecond.toFixed(1)} steps/s` : "—"}</dd></div>
      <div><dt>Worker</dt><dd>{job.worker || "—"}</dd></div>
      <div><dt>Attempts</dt><dd>{job.attempts}</dd></div>
      <div><dt>Created</dt><dd>{formatTime(job.createTime)}</dd></div>
      <div><dt>Created by</dt><dd data-creator={job.creator}>{job.creator || "—"}</dd></div>
      <div><dt>Phase</dt><dd>{job.phase || "—"}</dd></div>
      {job.error?.message ? <div><dt>Error</dt><dd className="bad">{job.error.message}</dd></div> : null}
    </dl>
  );
}

function JobControls({ job, onChanged }: { job: TrainingJob; onChanged: () => void }) {
  const training = useClient(TrainingService);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [busy, setBusy] = useState(false);
  const [lr, setLr] = useState("");
  const [alpha, setAlpha] = useState("");
  const [lamb, setLamb] = useState("");
  const name = job.name;
  const act = async (fn: () => Promise<unknown>) => {
    setBusy(true);
    setProblem(null);
    try {
      await fn();
      onChanged();
    } catch (err) {
      setProblem(describeError(err));
    } finally {
      setBusy(false);
    }
  };
  const num = (s: string) => (s.trim() === "" ? undefined : Number(s));
  const running = job.state === TrainingJobState.RUNNING;
  const field = (path: string) => problem?.fields[path]?.join("; ");
  return (
    <div className="controls" aria-label="Job controls" role="group">
      <button type="button" disabled={busy || !ACTIVE.has(job.state)} onClick={() => act(() => training.cancelTrainingJob({ name }))}>Cancel</button>
      <button type="button" disabled={busy || !running} onClick={() => act(() => training.pauseTrainingJob({ name }))}>Pause</button>
      <button type="button" disabled={busy || job.state !== TrainingJobState.PAUSED} onClick={() => act(() => training.resumeTrainingJob({ name }))}>Resume</button>
      <button type="button" disabled={busy || !running} onClick={() => act(() => training.checkpointTrainingJob({ name }))}>Checkpoint now</button>
      <form
        className="adjust"
        noValidate
        onSubmit={(e) => {
          e.preventDefault();
          void act(() => training.adjustTrainingJob({ name, learningRate: num(lr), grokfastAlpha: num(alpha), grokfastLamb: num(lamb) }));
        }}
      >
        <label>lr <input id="adjust-lr" value={lr} onChange={(e) => setLr(e.target.value)} inputMode="decimal" size={8} aria-invalid={!!field("learning_rate")} /></label>
        <label>α <input id="adjust-alpha" value={alpha} onChange={(e) => setAlpha(e.target.value)} inputMode="decimal" size={6} aria-invalid={!!field("grokfast_alpha")} /></label>
        <label>λ <input id="adjust-lamb" value={lamb} onChange={(e) => setLamb(e.target.value)} inputMode="decimal" size={6} aria-invalid={!!field("grokfast_lamb")} /></label>
        <button type="submit" disabled={busy || !ACTIVE.has(job.state)}>Adjust</button>
      </form>
      <ProblemView problem={problem} title="The job did not accept this" />
    </div>
  );
}
