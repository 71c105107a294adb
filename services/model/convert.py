"""Domain records ↔ protobuf messages of ``agentforge.model.v1``."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from agentforge.model.v1 import model_export_pb2, model_pb2, model_version_pb2
from services.model.store import ExportRecord, Lineage, ModelRecord, VersionRecord

__all__ = [
    "export_to_proto",
    "format_from_proto",
    "format_to_proto",
    "lineage_from_proto",
    "model_to_proto",
    "state_from_proto",
    "version_to_proto",
]


def _ts(us: int) -> Timestamp | None:
    if not us:
        return None
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def format_to_proto(fmt: str) -> int:
    return model_version_pb2.ArtifactFormat.Value(f"ARTIFACT_FORMAT_{fmt or 'UNSPECIFIED'}")


def format_from_proto(value: int) -> str:
    """Enum value → domain name; "" for UNSPECIFIED."""
    name = model_version_pb2.ArtifactFormat.Name(value).removeprefix("ARTIFACT_FORMAT_")
    return "" if name == "UNSPECIFIED" else name


def state_from_proto(value: int) -> str:
    return model_version_pb2.ModelVersionState.Name(value).removeprefix("MODEL_VERSION_STATE_")


def lineage_from_proto(msg: model_version_pb2.Lineage) -> Lineage:
    return Lineage(training_job=msg.training_job, checkpoint=msg.checkpoint, phase_run=msg.phase_run,
                   phase=msg.phase, parent_versions=list(msg.parent_versions), merge_method=msg.merge_method)


def model_to_proto(m: ModelRecord) -> model_pb2.Model:
    return model_pb2.Model(
        name=m.name, display_name=m.display_name, description=m.description, labels=m.labels, tags=m.tags,
        aliases={k: str(v) for k, v in m.aliases.items()},
        latest_version="" if m.latest_version is None else str(m.latest_version),
        version_count=m.version_count, create_time=_ts(m.create_time), update_time=_ts(m.update_time),
        etag=m.etag, request_id=m.request_id,
    )


def version_to_proto(v: VersionRecord) -> model_version_pb2.ModelVersion:
    a, lin = v.artifact, v.lineage
    artifact = model_version_pb2.Artifact(
        state=model_version_pb2.ArtifactState.Value(f"ARTIFACT_STATE_{a.state}"),
        sha256=a.sha256, size_bytes=a.size_bytes, committed_bytes=a.committed_bytes,
        content_type=a.content_type, format=format_to_proto(a.format), complete_time=_ts(a.complete_time),
    )
    if a.error_code:
        artifact.error.CopyFrom(status_pb2.Status(code=a.error_code, message=a.error_message))
    return model_version_pb2.ModelVersion(
        name=v.name, description=v.description, tags=v.tags, metrics=v.metrics, parameters=v.parameters,
        lineage=model_version_pb2.Lineage(
            training_job=lin.training_job, checkpoint=lin.checkpoint, phase_run=lin.phase_run, phase=lin.phase,
            parent_versions=lin.parent_versions, merge_method=lin.merge_method),
        artifact=artifact, aliases=v.aliases,
        state=model_version_pb2.ModelVersionState.Value(f"MODEL_VERSION_STATE_{v.state}"),
        create_time=_ts(v.create_time), update_time=_ts(v.update_time), etag=v.etag, request_id=v.request_id,
    )


def export_to_proto(e: ExportRecord) -> model_export_pb2.ModelExport:
    msg = model_export_pb2.ModelExport(
        name=e.name, format=format_to_proto(e.format),
        state=model_export_pb2.ModelExportState.Value(f"MODEL_EXPORT_STATE_{e.state}"),
        sha256=e.sha256, size_bytes=e.size_bytes, content_type=e.content_type or "",
        source_sha256=e.source_sha256, create_time=_ts(e.create_time), complete_time=_ts(e.complete_time),
    )
    if e.error_code:
        msg.error.CopyFrom(status_pb2.Status(code=e.error_code, message=e.error_message))
    return msg
