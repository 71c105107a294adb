"""The contracts as a whole: they load, every RPC is routed and documented, paging and
field behaviors are where they must be, and every request field carries validation rules."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor

from buf.validate import validate_pb2

from .conftest import import_all_generated

EXPECTED_SERVICES = {
    "agentforge.training.v1.TrainingService",
    "agentforge.model.v1.ModelService",
    "agentforge.realtime.v1.RealtimeService",
    "agentforge.monitoring.v1.MonitoringService",
    "agentforge.forge.v1.ForgeService",
}
OUTPUT = {field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IDENTIFIER}


def _methods(services):
    return [m for s in services for m in s.methods]


def _behaviors(field: descriptor.FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _has_rule(field: descriptor.FieldDescriptor) -> bool:
    opts = field.GetOptions()
    if not opts.HasExtension(validate_pb2.field):
        return False
    return opts.Extensions[validate_pb2.field].ListFields() != []


def test_generated_modules_import():
    names = import_all_generated()
    assert any(n.endswith("_service_pb2_grpc") for n in names)


def test_all_five_services_and_the_event_envelope_exist(services, pool):
    assert {s.full_name for s in services} == EXPECTED_SERVICES
    envelope = pool.FindMessageTypeByName("agentforge.events.v1.Event")
    assert envelope.oneofs_by_name["payload"].fields, "the envelope carries typed payloads"


def test_descriptor_set_has_imports_source_info_and_error_details(descriptor_set, our_files):
    names = {f.name for f in descriptor_set.file}
    assert "google/rpc/error_details.proto" in names  # convert_grpc_status needs it
    assert "google/api/annotations.proto" in names
    assert all(f.source_code_info.location for f in our_files)


def test_every_rpc_has_a_v1_http_binding(services):
    for m in _methods(services):
        opts = m.GetOptions()
        assert opts.HasExtension(annotations_pb2.http), m.full_name
        rule = opts.Extensions[annotations_pb2.http]
        path = getattr(rule, rule.WhichOneof("pattern"))
        assert path.startswith("/v1/"), (m.full_name, path)


def test_rest_routes_are_unique(services):
    seen = {}
    for m in _methods(services):
        rule = m.GetOptions().Extensions[annotations_pb2.http]
        key = (rule.WhichOneof("pattern"), getattr(rule, rule.WhichOneof("pattern")))
        assert key not in seen, f"{m.full_name} and {seen.get(key)} share {key}"
        seen[key] = m.full_name


def test_request_messages_are_named_after_their_rpc(services):
    for m in _methods(services):
        assert m.input_type.name == f"{m.name}Request", m.full_name


def test_every_list_rpc_pages(services):
    lists = [m for m in _methods(services) if m.name.startswith("List")]
    assert len(lists) >= 8
    for m in lists:
        fields = m.input_type.fields_by_name
        assert fields["page_size"].type == fields["page_size"].TYPE_INT32, m.full_name
        assert fields["page_token"].type == fields["page_token"].TYPE_STRING, m.full_name
        assert "next_page_token" in m.output_type.fields_by_name, m.full_name
        assert _has_rule(fields["page_size"]) and _has_rule(fields["page_token"]), m.full_name


def _our_messages(pool, our_files):
    out = []

    def walk(md):
        if md.GetOptions().map_entry:
            return
        out.append(md)
        for n in md.nested_types:
            walk(n)

    for f in our_files:
        for md in pool.FindFileByName(f.name).message_types_by_name.values():
            walk(md)
    return out


def test_every_field_has_a_field_behavior(pool, our_files):
    missing = [
        f.full_name
        for md in _our_messages(pool, our_files)
        for f in md.fields
        if not _behaviors(f)
    ]
    assert not missing, missing


def test_every_client_set_request_field_has_validation_rules(services):
    """Walks each request message and the messages nested in it that clients fill: every
    field a client sets carries a protovalidate rule (bools excepted: they have no bounds;
    optional sub-messages are checked field by field instead)."""
    missing: list[str] = []
    seen: set[str] = set()

    def walk(md: descriptor.Descriptor) -> None:
        if md.full_name in seen or not md.full_name.startswith("agentforge."):
            return
        seen.add(md.full_name)
        for f in md.fields:
            if _behaviors(f) & OUTPUT:
                continue
            if f.type == f.TYPE_BOOL:
                continue
            is_msg = f.type == f.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry
            if is_msg and f.message_type.full_name.startswith("agentforge."):
                if field_behavior_pb2.REQUIRED in _behaviors(f) and not _has_rule(f):
                    missing.append(f.full_name + " (REQUIRED message without required rule)")
                walk(f.message_type)
                continue
            if not _has_rule(f):
                missing.append(f.full_name)

    for m in _methods(services):
        walk(m.input_type)
    assert not missing, "fields without protovalidate rules:\n" + "\n".join(missing)


def test_enums_start_with_an_unspecified_zero(pool, our_files):
    for f in our_files:
        fd = pool.FindFileByName(f.name)
        enums = list(fd.enum_types_by_name.values())
        for md in _our_messages(pool, our_files):
            if md.file is fd:
                enums += md.enum_types
        for e in enums:
            assert e.values_by_number[0].name.endswith("_UNSPECIFIED"), e.full_name


def test_streaming_rpcs_document_how_they_resume_and_end(our_files):
    """Server streams are long-lived: their comments must say how a client resumes
    (cursor) or re-syncs, and how the stream ends."""
    for f in our_files:
        comments = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location}
        for si, svc in enumerate(f.service):
            for mi, m in enumerate(svc.method):
                if not m.server_streaming:
                    continue
                text = comments.get((6, si, 2, mi), "").lower()
                assert any(w in text for w in ("cursor", "snapshot", "offset")), m.name
                assert "end" in text, m.name


@pytest.mark.parametrize("kind", ["unary", "server", "client"])
def test_rpc_kinds_are_all_used(services, kind):
    methods = _methods(services)
    if kind == "unary":
        assert any(not m.client_streaming and not m.server_streaming for m in methods)
    elif kind == "server":
        assert sum(m.server_streaming for m in methods) >= 5
    else:
        assert any(m.client_streaming for m in methods)


def test_every_server_stream_can_carry_its_final_status(services):
    """REST clients cannot read trailers, so every server stream's response type has an
    output-only `google.rpc.Status stream_end` for the status the stream ends with."""
    streams = [m for m in _methods(services) if m.server_streaming]
    assert len(streams) >= 5
    for m in streams:
        field = m.output_type.fields_by_name.get("stream_end")
        assert field is not None, f"{m.full_name}: {m.output_type.full_name} has no stream_end"
        assert field.message_type is not None and field.message_type.full_name == "google.rpc.Status", m.full_name
        assert not field.is_repeated, m.full_name
        assert field_behavior_pb2.OUTPUT_ONLY in _behaviors(field), m.full_name
        oneof = field.containing_oneof
        if any(f.containing_oneof is not None and f.containing_oneof.name == "kind" for f in m.output_type.fields):
            assert oneof is not None and oneof.name == "kind", f"{m.full_name}: stream_end belongs in oneof kind"
