/** Models: the registry's models, versions, aliases, lineage; download with progress; export. */
import { useState } from "react";
import { ModelService } from "@gen/agentforge/model/v1/model_service_pb";
import { ArtifactFormat, ArtifactState, ModelVersionState, type ModelVersion } from "@gen/agentforge/model/v1/model_version_pb";
import { ModelExportState, type ModelExport } from "@gen/agentforge/model/v1/model_export_pb";
import { describeError, type Problem } from "../api/errors";
import { enumLabel, formatTime, ProblemView } from "../components/common";
import { useClient, useUnary } from "../hooks/hooks";

const idOf = (name: string) => name.split("/").pop() ?? name;
const formatBytes = (n: bigint | number) => {
  const v = Number(n);
  return v < 1024 ? `${v} B` : v < 1 << 20 ? `${(v / 1024).toFixed(1)} KiB` : `${(v / (1 << 20)).toFixed(1)} MiB`;
};

export function ModelsPage() {
  const model = useClient(ModelService);
  const models = useUnary((signal) => model.listModels({ pageSize: 100 }, { signal }), [model]);
  return (
    <section aria-labelledby="models-title">
      <h1 id="models-title">Models</h1>
      <ProblemView problem={models.problem} title="Could not list the models" />
      <table className="grid" id="models-table">
        <thead><tr><th scope="col">Model</th><th scope="col">Latest version</th><th scope="col">Aliases</th><th scope="col">Tags</th><th scope="col">Updated</th></tr></thead>
        <tbody>
          {(models.data?.models ?? []).map((m) => (
            <tr key={m.name} data-model={idOf(m.name)}>
              <th scope="row"><a href={`#/models/${idOf(m.name)}`}>{m.displayName || idOf(m.name)}</a></th>
              <td>{m.latestVersion ? idOf(m.latestVersion) : "—"}</td>
              <td>{Object.entries(m.aliases).map(([a, v]) => `${a} → ${idOf(v)}`).join(", ") || "—"}</td>
              <td>{m.tags.join(", ") || "—"}</td>
              <td>{formatTime(m.updateTime)}</td>
            </tr>
          ))}
          {models.data && models.data.models.length === 0 ? <tr><td colSpan={5} className="muted">No models yet: a finished phase run registers one.</td></tr> : null}
        </tbody>
      </table>
    </section>
  );
}

export function ModelPage({ id }: { id: string }) {
  const model = useClient(ModelService);
  const name = `models/${id}`;
  const m = useUnary((signal) => model.getModel({ name }, { signal }), [model, name]);
  const versions = useUnary((signal) => model.listModelVersions({ parent: name, pageSize: 100 }, { signal }), [model, name]);
  const [alias, setAlias] = useState("");
  const [target, setTarget] = useState("");
  const [problem, setProblem] = useState<Problem | null>(null);
  const setModelAlias = async (e: React.FormEvent) => {
    e.preventDefault();
    setProblem(null);
    try {
      await model.setModelAlias({ name, alias: alias.trim(), version: target.trim() });
      m.reload();
      versions.reload();
    } catch (err) {
      setProblem(describeError(err));
    }
  };
  return (
    <section aria-labelledby="model-title">
      <p><a href="#/models">← Models</a></p>
      <h1 id="model-title">{m.data?.displayName || id}</h1>
      <ProblemView problem={m.problem} title="Could not load the model" />
      {m.data?.description ? <p>{m.data.description}</p> : null}
      <p>Aliases: {Object.entries(m.data?.aliases ?? {}).map(([a, v]) => `${a} → ${idOf(v)}`).join(", ") || "none"}</p>
      <form className="inline-form" onSubmit={setModelAlias} noValidate aria-label="Set an alias">
        <label htmlFor="alias-name">Alias</label>
        <input id="alias-name" value={alias} onChange={(e) => setAlias(e.target.value)} size={12} aria-invalid={!!problem?.fields.alias} />
        <label htmlFor="alias-version">version</label>
        <input id="alias-version" value={target} onChange={(e) => setTarget(e.target.value)} placeholder={`${name}/versions/1`} size={28} aria-invalid={!!problem?.fields.version} />
        <button type="submit">Set alias</button>
      </form>
      <ProblemView problem={problem} title="The alias was not set" />
      <h2>Versions</h2>
      <ProblemView problem={versions.problem} title="Could not list the versions" />
      <table className="grid" id="versions-table">
        <thead><tr><th scope="col">Version</th><th scope="col">State</th><th scope="col">Lineage</th><th scope="col">Metrics</th><th scope="col">Artifact</th><th scope="col"><span className="muted">Actions</span></th></tr></thead>
        <tbody>
          {(versions.data?.modelVersions ?? []).map((v) => <VersionRow key={v.name} version={v} />)}
        </tbody>
      </table>
    </section>
  );
}

function Lineage({ v }: { v: ModelVersion }) {
  const l = v.lineage;
  if (!l) return <>—</>;
  return (
    <ul className="plain">
      {l.trainingJob ? <li>job <a href={`#/jobs/${idOf(l.trainingJob)}`}>{idOf(l.trainingJob)}</a>{l.checkpoint ? `, checkpoint ${idOf(l.checkpoint)}` : ""}</li> : null}
      {l.phaseRun ? <li>run <a href={`#/phaseRuns/${idOf(l.phaseRun)}`}>{idOf(l.phaseRun)}</a>{l.phase ? ` (${idOf(l.phase)})` : ""}</li> : null}
      {l.parentVersions.length ? <li>parents {l.parentVersions.map((p) => p.replace("models/", "").replace("/versions/", " v")).join(", ")}{l.mergeMethod ? ` by ${l.mergeMethod}` : ""}</li> : null}
    </ul>
  );
}

function VersionRow({ version: v }: { version: ModelVersion }) {
  const model = useClient(ModelService);
  const [progress, setProgress] = useState<{ done: number; total: number } | null>(null);
  const [problem, setProblem] = useState<Problem | null>(null);
  const [format, setFormat] = useState(ArtifactFormat.ONNX);
  const [exp, setExp] = useState<ModelExport | null>(null);
  const art = v.artifact;
  const ready = art?.state === ArtifactState.READY;

  const download = async () => {
    setProblem(null);
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    let total = Number(art?.sizeBytes ?? 0n);
    let type = art?.contentType || "application/octet-stream";
    try {
      setProgress({ done: 0, total });
      let done = 0;
      for await (const part of model.downloadModelArtifact({ name: v.name })) {
        if (part.streamEnd) {
          if (part.streamEnd.code !== 0) throw new Error(part.streamEnd.message);
          break;
        }
        total = Number(part.totalSizeBytes) || total;
        type = part.contentType || type;
        chunks.push(new Uint8Array(part.data));
        done += part.data.length;
        setProgress({ done, total });
      }
      const url = URL.createObjectURL(new Blob(chunks, { type }));
      const a = document.createElement("a");
      a.href = url;
      a.download = `${v.name.replace(/\//g, "-")}${art?.format === ArtifactFormat.SAFETENSORS ? ".safetensors" : ".pt"}`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      setProblem(describeError(err));
    }
  };
  const exportVersion = async () => {
    setProblem(null);
    try {
      let e = await model.exportModelVersion({ name: v.name, format });
      setExp(e);
      for (let i = 0; i < 120 && [ModelExportState.PENDING, ModelExportState.RUNNING].includes(e.state); i++) {
        await new Promise((r) => setTimeout(r, 1000));
        e = await model.getModelExport({ name: e.name });
        setExp(e);
      }
    } catch (err) {
      setProblem(describeError(err));
    }
  };
  return (
    <tr data-version={v.name}>
      <th scope="row">{idOf(v.name)}{v.aliases.length ? <div className="muted">{v.aliases.join(", ")}</div> : null}</th>
      <td>{enumLabel(ModelVersionState, v.state, "")}</td>
      <td><Lineage v={v} /></td>
      <td>{Object.entries(v.metrics).map(([k, x]) => `${k} ${x.toFixed(4)}`).join(", ") || "—"}</td>
      <td>{art ? `${enumLabel(ArtifactState, art.state, "")}, ${formatBytes(art.sizeBytes)}` : "—"}{art?.sha256 ? <div><code>{art.sha256.slice(0, 12)}…</code></div> : null}</td>
      <td>
        <button type="button" disabled={!ready} onClick={download}>Download</button>{" "}
        {progress ? <progress max={progress.total || 1} value={progress.done} aria-label={`Download of ${v.name}`} /> : null}
        {progress ? <span className="muted"> {formatBytes(progress.done)} / {formatBytes(progress.total)}</span> : null}
        <div className="inline-form">
          <label htmlFor={`fmt-${v.name}`}>Export as</label>
          <select id={`fmt-${v.name}`} value={format} onChange={(e) => setFormat(Number(e.target.value))}>
            {[ArtifactFormat.ONNX, ArtifactFormat.TORCHSCRIPT, ArtifactFormat.SAFETENSORS].map((f) => (
              <option key={f} value={f}>{enumLabel(ArtifactFormat, f, "")}</option>
            ))}
          </select>
          <button type="button" disabled={!ready} onClick={exportVersion}>Export</button>
        </div>
        {exp ? <div className="muted">export {enumLabel(ModelExportState, exp.state, "")}{exp.sizeBytes ? `, ${formatBytes(exp.sizeBytes)}` : ""}{exp.error?.message ? `: ${exp.error.message}` : ""}</div> : null}
        <ProblemView problem={problem} title="That did not work" />
      </td>
    </tr>
  );
}
