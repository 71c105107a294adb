/**
 * The create form. Values go to the server as typed, without rules of our own: the
 * server's protovalidate rules are the one source, and its field violations are shown
 * next to the fields they name (`training_job.spec.batch_size` → "Batch size").
 */
import { useState } from "react";
import { TrainingService } from "@gen/agentforge/training/v1/training_service_pb";
import { create } from "@bufbuild/protobuf";
import {
  GrokfastKind,
  OptimizerKind,
  TaskKind,
  TrainingJobSchema,
  type TrainingJob,
} from "@gen/agentforge/training/v1/training_job_pb";
import { describeError, unplacedViolations, violationsAt, type Problem } from "../api/errors";
import { Field, ProblemView } from "../components/common";
import { useClient } from "../hooks/hooks";

type Kind = "int" | "bigint" | "float";

interface NumField {
  key: string;
  label: string;
  kind: Kind;
  /** Field paths whose violations show at this field. */
  paths: string[];
  initial: string;
  help?: string;
}

const S = "training_job.spec";
const NUM_FIELDS: NumField[] = [
  { key: "modulus", label: "Modulus (p)", kind: "int", paths: [`${S}.task.modulus`], initial: "17", help: "x·y mod p" },
  { key: "trainFraction", label: "Train fraction", kind: "float", paths: [`${S}.task.train_fraction`], initial: "0.5" },
  { key: "layers", label: "Layers", kind: "int", paths: [`${S}.model.layers`], initial: "1" },
  { key: "width", label: "Width", kind: "int", paths: [`${S}.model.width`, `${S}.model`], initial: "32" },
  { key: "heads", label: "Heads", kind: "int", paths: [`${S}.model.heads`], initial: "2" },
  { key: "contextLength", label: "Context length", kind: "int", paths: [`${S}.model.context_length`], initial: "4" },
  { key: "learningRate", label: "Learning rate", kind: "float", paths: [`${S}.optimizer.learning_rate`], initial: "0.001" },
  { key: "warmupSteps", label: "Warm-up steps", kind: "bigint", paths: [`${S}.optimizer.warmup_steps`], initial: "3" },
  { key: "alpha", label: "GrokFast α", kind: "float", paths: [`${S}.grokfast.alpha`], initial: "0.98" },
  { key: "lamb", label: "GrokFast λ", kind: "float", paths: [`${S}.grokfast.lamb`], initial: "2" },
  { key: "batchSize", label: "Batch size", kind: "int", paths: [`${S}.batch_size`], initial: "64" },
  { key: "maxSteps", label: "Max steps", kind: "bigint", paths: [`${S}.max_steps`], initial: "200" },
  { key: "evalInterval", label: "Eval every (steps)", kind: "bigint", paths: [`${S}.eval_interval`], initial: "20" },
  { key: "checkpointInterval", label: "Checkpoint every (steps)", kind: "bigint", paths: [`${S}.checkpoint_interval`], initial: "50" },
  { key: "progressInterval", label: "Progress every (steps)", kind: "bigint", paths: [`${S}.progress_interval`], initial: "1" },
  { key: "seed", label: "Seed", kind: "bigint", paths: [`${S}.seed`], initial: "0" },
];

const TEXT_PATHS = {
  displayName: ["training_job.display_name"],
  jobId: ["training_job_id"],
  taskKind: [`${S}.task.kind`, `${S}.task`],
  optimizerKind: [`${S}.optimizer.kind`],
  grokfastKind: [`${S}.grokfast.kind`],
};

function parse(kind: Kind, raw: string): number | bigint | null {
  const text = raw.trim();
  if (text === "") return kind === "bigint" ? 0n : 0;
  if (kind === "float") {
    const v = Number(text);
    return Number.isFinite(v) ? v : null;
  }
  if (!/^-?\d+$/.test(text)) return null;
  return kind === "bigint" ? BigInt(text) : Number(text);
}

export function CreateJobForm({ onCreated }: { onCreated: (job: TrainingJob) => void }) {
  const training = useClient(TrainingService);
  const [values, setValues] = useState<Record<string, string>>(() =>
    Object.fromEntries(NUM_FIELDS.map((f) => [f.key, f.initial])),
  );
  const [displayName, setDisplayName] = useState("");
  const [jobId, setJobId] = useState("");
  const [taskKind, setTaskKind] = useState(TaskKind.MODULAR_ARITHMETIC);
  const [optimizerKind, setOptimizerKind] = useState(OptimizerKind.ADAMW);
  const [grokfastKind, setGrokfastKind] = useState(GrokfastKind.EMA);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [local, setLocal] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    const parsed: Record<string, number | bigint> = {};
    const bad: Record<string, string> = {};
    for (const f of NUM_FIELDS) {
      const v = parse(f.kind, values[f.key]);
      if (v === null) bad[f.key] = f.kind === "float" ? "enter a number" : "enter a whole number";
      else parsed[f.key] = v;
    }
    setLocal(bad);
    if (Object.keys(bad).length) return;
    const job = create(TrainingJobSchema, {
      displayName,
      spec: {
        task: { kind: taskKind, modulus: parsed.modulus as number, trainFraction: parsed.trainFraction as number },
        model: {
          layers: parsed.layers as number,
          width: parsed.width as number,
          heads: parsed.heads as number,
          contextLength: parsed.contextLength as number,
        },
        optimizer: { kind: optimizerKind, learningRate: parsed.learningRate as number, warmupSteps: parsed.warmupSteps as bigint },
        grokfast: { kind: grokfastKind, alpha: parsed.alpha as number, lamb: parsed.lamb as number },
        batchSize: parsed.batchSize as number,
        maxSteps: parsed.maxSteps as bigint,
        evalInterval: parsed.evalInterval as bigint,
        checkpointInterval: parsed.checkpointInterval as bigint,
        progressInterval: parsed.progressInterval as bigint,
        seed: parsed.seed as bigint,
      },
    });
    setBusy(true);
    setProblem(null);
    try {
      const created = await training.createTrainingJob({
        trainingJob: job,
        trainingJobId: jobId.trim(),
        requestId: crypto.randomUUID(),
      });
      onCreated(created);
    } catch (err) {
      setProblem(describeError(err));
    } finally {
      setBusy(false);
    }
  };

  const placed = [...NUM_FIELDS.flatMap((f) => f.paths), ...Object.values(TEXT_PATHS).flat()];
  const leftover = unplacedViolations(problem, placed);
  const enumSelect = <E extends Record<string, string | number>>(
    id: string,
    label: string,
    enumObj: E,
    value: number,
    set: (v: number) => void,
    paths: string[],
  ) => (
    <Field id={id} label={label} errors={violationsAt(problem, ...paths)}>
      <select id={id} value={value} onChange={(e) => set(Number(e.target.value))}
        aria-invalid={violationsAt(problem, ...paths).length > 0}>
        {Object.entries(enumObj)
          .filter(([, v]) => typeof v === "number")
          .map(([k, v]) => (
            <option key={k} value={v as number}>{k.toLowerCase().replace(/_/g, " ")}</option>
          ))}
      </select>
    </Field>
  );

  return (
    <details className="card" open>
      <summary><h2 className="inline">New training job</h2></summary>
      <form onSubmit={submit} noValidate aria-label="New training job" id="create-job-form">
        {problem ? (
          <ProblemView
            problem={{ ...problem, fields: Object.fromEntries(leftover.map(([p, m]) => [p, [m]])) }}
            title="The job was not created"
          />
        ) : null}
        <div className="form-grid">
          <Field id="displayName" label="Display name" errors={violationsAt(problem, ...TEXT_PATHS.displayName)}>
            <input id="displayName" value={displayName} onChange={(e) => setDisplayName(e.target.value)} />
          </Field>
          <Field id="jobId" label="Job id (optional)" errors={violationsAt(problem, ...TEXT_PATHS.jobId)}
            help="lowercase letters, digits and -">
            <input id="jobId" value={jobId} onChange={(e) => setJobId(e.target.value)} aria-describedby="jobId-help" />
          </Field>
          {enumSelect("taskKind", "Task", TaskKind, taskKind, setTaskKind, TEXT_PATHS.taskKind)}
          {enumSelect("optimizerKind", "Optimizer", OptimizerKind, optimizerKind, setOptimizerKind, TEXT_PATHS.optimizerKind)}
          {enumSelect("grokfastKind", "GrokFast", GrokfastKind, grokfastKind, setGrokfastKind, TEXT_PATHS.grokfastKind)}
          {NUM_FIELDS.map((f) => {
            const errors = [...(local[f.key] ? [local[f.key]] : []), ...violationsAt(problem, ...f.paths)];
            return (
              <Field key={f.key} id={f.key} label={f.label} errors={errors} help={f.help}>
                <input
                  id={f.key}
                  name={f.key}
                  inputMode={f.kind === "float" ? "decimal" : "numeric"}
                  value={values[f.key]}
                  aria-invalid={errors.length > 0}
                  aria-describedby={errors.length ? `${f.key}-error` : undefined}
                  onChange={(e) => setValues({ ...values, [f.key]: e.target.value })}
                />
              </Field>
            );
          })}
        </div>
        <button type="submit" disabled={busy}>{busy ? "Creating…" : "Create job"}</button>
      </form>
    </details>
  );
}
