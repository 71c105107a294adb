"""Render the API reference (docs/api-reference.md) from the descriptor set.

The reference is generated from the proto comments, HTTP bindings and field behaviors in
gen/descriptor/agentforge.binpb, so it cannot drift from the contracts. `tools/gen.py`
calls `render()`; `--check` is part of `make check-gen`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

__all__ = ["render"]

_TYPE_NAMES = {
    v: k[len("TYPE_") :].lower()
    for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()
}
_BEHAVIOR = {v: k for k, v in field_behavior_pb2.FieldBehavior.items()}


def _comments(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    out = {}
    for loc in fd.source_code_info.location:
        text = (loc.leading_comments or loc.trailing_comments).strip()
        if text:
            out[tuple(loc.path)] = " ".join(line.strip() for line in text.splitlines())
    return out


def _route(method: descriptor_pb2.MethodDescriptorProto) -> str:
    opts = method.options
    if not opts.HasExtension(annotations_pb2.http):
        return "(no REST route)"
    rule: http_pb2.HttpRule = opts.Extensions[annotations_pb2.http]
    kind = rule.WhichOneof("pattern")
    path = getattr(rule, kind) if kind != "custom" else rule.custom.path
    verb = kind.upper() if kind != "custom" else rule.custom.kind
    body = f" (body: `{rule.body}`)" if rule.body else ""
    return f"`{verb} {path}`{body}"


def _kind(m: descriptor_pb2.MethodDescriptorProto) -> str:
    if m.client_streaming and m.server_streaming:
        return "bidi stream"
    if m.client_streaming:
        return "client stream"
    if m.server_streaming:
        return "server stream"
    return "unary"


def _ftype(f: descriptor_pb2.FieldDescriptorProto, maps: set[str]) -> str:
    if f.type_name:
        name = f.type_name.lstrip(".")
        if name in maps:
            return "map"
        base = name.rsplit(".", 1)[-1]
    else:
        base = _TYPE_NAMES[f.type]
    return f"repeated {base}" if f.label == f.LABEL_REPEATED else base


def render(descriptor_set: Path) -> str:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    files = [f for f in fds.file if f.package.startswith("agentforge.")]
    by_pkg: dict[str, list[descriptor_pb2.FileDescriptorProto]] = defaultdict(list)
    for f in files:
        by_pkg[f.package].append(f)

    lines = [
        "# Agent Forge API reference",
        "",
        "Generated from `proto/` by `make gen` (tools/api_docs.py); do not edit by hand.",
        "Semantics shared by every API (errors, paging, cursors and epochs, how streams end,",
        "REST framing) are in [docs/api.md](../../docs/api.md).",
        "",
    ]
    for pkg in sorted(by_pkg):
        pfiles = sorted(by_pkg[pkg], key=lambda f: f.name)
        lines += [f"## `{pkg}`", ""]
        for fd in pfiles:
            com = _comments(fd)
            for si, svc in enumerate(fd.service):
                lines += [f"### service `{svc.name}`", "", com.get((6, si), ""), ""]
                lines += ["| RPC | kind | REST | what it does |", "|---|---|---|---|"]
                for mi, m in enumerate(svc.method):
                    req = m.input_type.rsplit(".", 1)[-1]
                    resp = m.output_type.rsplit(".", 1)[-1]
                    stream = "stream " if m.server_streaming else ""
                    cstream = "stream " if m.client_streaming else ""
                    sig = f"`{m.name}({cstream}{req}) → {stream}{resp}`"
                    text = com.get((6, si, 2, mi), "").replace("|", "\\|")
                    lines.append(f"| {sig} | {_kind(m)} | {_route(m)} | {text} |")
                lines.append("")
        lines += [f"### messages and enums of `{pkg}`", ""]
        for fd in pfiles:
            com = _comments(fd)
            for mi, msg in enumerate(fd.message_type):
                _render_message(lines, msg, com, (4, mi), pkg)
            for ei, enum in enumerate(fd.enum_type):
                _render_enum(lines, enum, com, (5, ei))
    return "\n".join(lines).rstrip() + "\n"


def _render_message(lines, msg, com, path, prefix) -> None:
    full = f"{prefix}.{msg.name}"
    if msg.options.map_entry:
        return
    maps = {f"{full}.{n.name}" for n in msg.nested_type if n.options.map_entry}
    lines += [f"#### `{msg.name}`", "", com.get(path, ""), ""]
    if msg.field:
        lines += ["| field | type | behavior | description |", "|---|---|---|---|"]
        for fi, f in enumerate(msg.field):
            beh = ", ".join(
                _BEHAVIOR[b] for b in f.options.Extensions[field_behavior_pb2.field_behavior]
            )
            text = com.get(path + (2, fi), "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | {_ftype(f, maps)} | {beh} | {text} |")
        lines.append("")
    for ni, nested in enumerate(msg.nested_type):
        _render_message(lines, nested, com, path + (3, ni), full)
    for ei, enum in enumerate(msg.enum_type):
        _render_enum(lines, enum, com, path + (4, ei))


def _render_enum(lines, enum, com, path) -> None:
    lines += [f"#### enum `{enum.name}`", "", com.get(path, ""), ""]
    lines += ["| value | description |", "|---|---|"]
    for vi, v in enumerate(enum.value):
        lines.append(f"| `{v.name}` | {com.get(path + (2, vi), '')} |")
    lines.append("")
