#!/usr/bin/env python3
"""Vendor the third-party .proto files that the buf module in ``proto/`` imports.

The BSR and GitHub are out of reach, so everything comes from installed PyPI wheels,
which makes the result reproducible from ``requirements.txt`` alone:

* ``google/api/*.proto`` and ``google/rpc/*.proto`` are copied byte for byte from the
  ``googleapis-common-protos`` wheel (the seed files below plus their transitive
  imports; ``google/protobuf/*`` well-known types are left to buf and protoc).
* ``buf/validate/validate.proto`` is not shipped as text by the ``protovalidate`` wheel.
  Its generated module embeds the serialized ``FileDescriptorProto`` (``_DESC =
  file_desc(b'...')``); we read that literal with :mod:`ast` (no import of the module),
  and print the descriptor back as ``.proto`` source. Custom options that use the
  file's own extensions (``[(buf.validate.predefined) = {cel {...}}]``) are resolved
  through a :class:`~google.protobuf.descriptor_pool.DescriptorPool` holding
  ``descriptor.proto`` and the file itself, then printed with text format.

``tests/contracts/test_vendored_protos.py`` proves the printed file compiles (protoc)
to a descriptor equal to the embedded one.

Usage::

    PYTHONPATH=. .venv/bin/python tools/vendor_protos.py          # write proto/...
    PYTHONPATH=. .venv/bin/python tools/vendor_protos.py --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import importlib.metadata
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    message,
    message_factory,
    text_encoding,
    timestamp_pb2,
    unknown_fields,
)
from google.protobuf.descriptor import FieldDescriptor

__all__ = [
    "GOOGLE_SEED_FILES",
    "VALIDATE_PROTO",
    "check",
    "google_proto_files",
    "google_source_dir",
    "load_validate_descriptor",
    "print_file",
    "protovalidate_version",
    "vendor",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "proto"

GOOGLE_DIST = "googleapis-common-protos"
PROTOVALIDATE_DIST = "protovalidate"
VALIDATE_PB_PATH = "protovalidate/_gen/buf/validate/validate_pb.py"
VALIDATE_PROTO = "buf/validate/validate.proto"

#: The google files our contracts import directly; their imports are added on top.
GOOGLE_SEED_FILES: tuple[str, ...] = (
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/field_behavior.proto",
    "google/api/resource.proto",
    "google/api/client.proto",
    "google/api/httpbody.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
)

#: Directories under the output root that this script owns entirely.
OWNED_DIRS: tuple[str, ...] = ("google", "buf")

_IMPORT_RE = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
_INDENT = "  "


# --------------------------------------------------------------------------- google


def google_source_dir() -> Path:
    """Return the site-packages directory holding the installed ``google/api`` protos."""
    return Path(str(importlib.metadata.distribution(GOOGLE_DIST).locate_file("")))


def google_proto_files(source_dir: Path | None = None) -> list[str]:
    """Return the seed files plus their transitive non-well-known imports, sorted."""
    root = source_dir or google_source_dir()
    seen: set[str] = set()
    todo = list(GOOGLE_SEED_FILES)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{name} is not in the installed {GOOGLE_DIST} wheel")
        seen.add(name)
        for dep in _IMPORT_RE.findall(path.read_text(encoding="utf-8")):
            if not dep.startswith("google/protobuf/"):
                todo.append(dep)
    return sorted(seen)


# --------------------------------------------------------------------- protovalidate


def protovalidate_version() -> str:
    """Return the installed protovalidate wheel's version."""
    return importlib.metadata.version(PROTOVALIDATE_DIST)


def _embedded_descriptor_bytes(path: Path) -> bytes:
    """Read the bytes literal passed to ``file_desc`` in ``_DESC = file_desc(b'...')``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        if not any(isinstance(t, ast.Name) and t.id == "_DESC" for t in node.targets):
            continue
        call = node.value
        if (
            isinstance(call, ast.Call)
            and call.args
            and isinstance(call.args[0], ast.Constant)
            and isinstance(call.args[0].value, bytes)
        ):
            return call.args[0].value
    raise ValueError(f"no `_DESC = file_desc(b'...')` literal found in {path}")


def load_validate_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Return the FileDescriptorProto embedded in the protovalidate wheel."""
    dist = importlib.metadata.distribution(PROTOVALIDATE_DIST)
    path = Path(str(dist.locate_file(VALIDATE_PB_PATH)))
    fdp = descriptor_pb2.FileDescriptorProto.FromString(_embedded_descriptor_bytes(path))
    if fdp.name != VALIDATE_PROTO:
        raise ValueError(f"embedded descriptor is {fdp.name!r}, expected {VALIDATE_PROTO!r}")
    return fdp


# -------------------------------------------------------------------------- printer

_WELL_KNOWN = {
    m.DESCRIPTOR.name: m.DESCRIPTOR.serialized_pb
    for m in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2)
}

_SCALAR_NAMES = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}

_MAX_FIELD_NUMBER = 536870911  # 2^29 - 1, what `max` means in ranges


def _json_default(name: str) -> str:
    """protoc's default json_name: drop underscores, capitalise the following letter."""
    out: list[str] = []
    upper = False
    for ch in name:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out)


_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _quote(value: str | bytes) -> str:
    """Return a .proto string literal; UTF-8 text stays readable, control bytes go octal."""
    if isinstance(value, bytes):
        return '"' + text_encoding.CEscape(value, as_utf8=False) + '"'
    out = []
    for ch in value:
        code = ord(ch)
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\{code:03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class _Printer:
    """Prints one FileDescriptorProto as .proto source."""

    def __init__(self, fdp: descriptor_pb2.FileDescriptorProto, header: str) -> None:
        self.fdp = fdp
        self.header = header
        self.editions = fdp.syntax == "editions"
        self.proto3 = fdp.syntax == "proto3"
        self.pool = self._build_pool(fdp)
        self.lines: list[str] = []

    # ---- pool / options

    @staticmethod
    def _build_pool(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pool.DescriptorPool:
        pool = descriptor_pool.DescriptorPool()
        for dep in fdp.dependency:
            if dep not in _WELL_KNOWN:
                raise ValueError(f"cannot resolve import {dep!r}: only well-known types are")
        for name in ("google/protobuf/descriptor.proto", *fdp.dependency):
            try:
                pool.FindFileByName(name)
            except KeyError:
                pool.AddSerializedFile(_WELL_KNOWN[name])
        pool.AddSerializedFile(fdp.SerializeToString())
        return pool

    def _resolve_options(self, opts: message.Message) -> message.Message:
        """Reparse an options message with the pool's class so custom options resolve."""
        cls = message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(opts.DESCRIPTOR.full_name)
        )
        resolved = cls.FromString(opts.SerializeToString())
        if len(unknown_fields.UnknownFieldSet(resolved)):
            raise ValueError(f"unresolved options in {opts.DESCRIPTOR.full_name}")
        return resolved

    def _option_entries(self, opts: message.Message, indent: str) -> list[str]:
        """Return ``name = value`` strings, one per (repeated) option value."""
        resolved = self._resolve_options(opts)
        entries: list[str] = []
        for fd, value in resolved.ListFields():
            name = f"({fd.full_name})" if fd.is_extension else fd.name
            values = value if fd.is_repeated else [value]
            for item in values:
                entries.append(f"{name} = {self._option_value(fd, item, indent)}")
        return entries

    def _option_value(self, fd: FieldDescriptor, value: object, indent: str) -> str:
        if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            assert isinstance(value, message.Message)
            body = self._aggregate(value, indent + _INDENT)
            return "{}" if not body else "{\n" + "".join(body) + indent + "}"
        if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            assert isinstance(value, int)
            return fd.enum_type.values_by_number[value].name
        if fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            return "true" if value else "false"
        if fd.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            assert isinstance(value, (str, bytes))
            return _quote(value)
        if fd.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
            assert isinstance(value, float)
            if value != value:
                return "nan"
            if value in (float("inf"), float("-inf")):
                return "inf" if value > 0 else "-inf"
            return repr(value)
        return str(value)

    def _aggregate(self, msg: message.Message, indent: str) -> list[str]:
        """Text-format lines (protoc's aggregate option syntax) for ``msg``'s set fields."""
        lines: list[str] = []
        for fd, value in msg.ListFields():
            name = f"[{fd.full_name}]" if fd.is_extension else fd.name
            for item in value if fd.is_repeated else [value]:
                if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                    assert isinstance(item, message.Message)
                    body = self._aggregate(item, indent + _INDENT)
                    if body:
                        lines.append(f"{indent}{name} {{\n")
                        lines.extend(body)
                        lines.append(f"{indent}}}\n")
                    else:
                        lines.append(f"{indent}{name} {{}}\n")
                else:
                    lines.append(f"{indent}{name}: {self._option_value(fd, item, indent)}\n")
        return lines

    def _statement_options(self, opts: message.Message, indent: str) -> None:
        for entry in self._option_entries(opts, indent):
            self.lines.append(f"{indent}option {entry};")

    def _bracket_options(self, extra: list[str], opts: message.Message | None, indent: str) -> str:
        entries = list(extra)
        if opts is not None:
            entries += self._option_entries(opts, indent)
        if not entries:
            return ""
        if len(entries) == 1 and "\n" not in entries[0]:
            return f" [{entries[0]}]"
        inner = indent + _INDENT
        body = ",\n".join(inner + e.replace("\n", "\n" + _INDENT) for e in entries)
        return " [\n" + body + "\n" + indent + "]"

    # ---- names

    def _type_ref(self, full: str) -> str:
        """Return a reference to ``.pkg.Type``, relative where that cannot be ambiguous.

        Types of this package drop the package prefix; others keep their full name,
        or the leading dot when their first component could be shadowed by a name
        of this file's scope. protoc's compile in the fidelity test catches misses.
        """
        assert full.startswith("."), full
        name = full[1:]
        package = self.fdp.package
        if package and name.startswith(package + "."):
            return name[len(package) + 1 :]
        shadowing = {m.name for m in self.fdp.message_type} | {e.name for e in self.fdp.enum_type}
        shadowing |= set(package.split(".")) if package else set()
        return full if name.split(".")[0] in shadowing else name

    # ---- file

    def render(self) -> str:
        fdp = self.fdp
        self.lines.extend(self.header.rstrip("\n").splitlines())
        self.lines.append("")
        if self.editions:
            edition = descriptor_pb2.Edition.Name(fdp.edition).removeprefix("EDITION_")
            self.lines.append(f'edition = "{edition}";')
        else:
            self.lines.append(f'syntax = "{fdp.syntax or "proto2"}";')
        self.lines.append("")
        if fdp.package:
            self.lines.append(f"package {fdp.package};")
            self.lines.append("")
        public = set(fdp.public_dependency)
        weak = set(fdp.weak_dependency)
        for i, dep in enumerate(fdp.dependency):
            kind = "public " if i in public else "weak " if i in weak else ""
            self.lines.append(f'import {kind}"{dep}";')
        if fdp.dependency:
            self.lines.append("")
        if fdp.HasField("options"):
            self._statement_options(fdp.options, "")
            self.lines.append("")
        for msg in fdp.message_type:
            self._message(msg, "")
            self.lines.append("")
        for enum in fdp.enum_type:
            self._enum(enum, "")
            self.lines.append("")
        self._extensions(fdp.extension, "")
        for svc in fdp.service:
            self._service(svc)
            self.lines.append("")
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(self.lines) + "\n"

    # ---- messages

    def _message(self, msg: descriptor_pb2.DescriptorProto, indent: str) -> None:
        inner = indent + _INDENT
        self.lines.append(f"{indent}message {msg.name} {{")
        if msg.HasField("options"):
            self._statement_options(msg.options, inner)
        map_entries = {
            n.name: n for n in msg.nested_type if n.HasField("options") and n.options.map_entry
        }
        real_oneofs = {
            f.oneof_index
            for f in msg.field
            if f.HasField("oneof_index") and not f.proto3_optional
        }
        done_oneofs: set[int] = set()
        for field in msg.field:
            if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
                idx = field.oneof_index
                if idx in done_oneofs:
                    continue
                done_oneofs.add(idx)
                decl = msg.oneof_decl[idx]
                self.lines.append(f"{inner}oneof {decl.name} {{")
                if decl.HasField("options"):
                    self._statement_options(decl.options, inner + _INDENT)
                for member in msg.field:
                    if member.HasField("oneof_index") and member.oneof_index == idx:
                        self._field(member, inner + _INDENT, map_entries, in_oneof=True)
                self.lines.append(f"{inner}}}")
            else:
                self._field(field, inner, map_entries, in_oneof=False)
        for nested in msg.nested_type:
            if nested.name not in map_entries:
                self._message(nested, inner)
        for enum in msg.enum_type:
            self._enum(enum, inner)
        self._extensions(msg.extension, inner)
        for rng in msg.extension_range:
            text = self._range(rng.start, rng.end - 1)
            opts = rng.options if rng.HasField("options") else None
            self.lines.append(f"{inner}extensions {text}{self._bracket_options([], opts, inner)};")
        self._reserved(
            [(r.start, r.end - 1) for r in msg.reserved_range], msg.reserved_name, inner
        )
        self.lines.append(f"{indent}}}")

    def _range(self, start: int, end: int) -> str:
        if start == end:
            return str(start)
        return f"{start} to {'max' if end >= _MAX_FIELD_NUMBER else end}"

    def _reserved(self, ranges: list[tuple[int, int]], names: Iterable[str], indent: str) -> None:
        if ranges:
            self.lines.append(
                f"{indent}reserved {', '.join(self._range(a, b) for a, b in ranges)};"
            )
        names = list(names)
        if names:
            if self.editions:
                self.lines.append(f"{indent}reserved {', '.join(names)};")
            else:
                self.lines.append(f"{indent}reserved {', '.join(_quote(n) for n in names)};")

    def _field_type(
        self,
        field: descriptor_pb2.FieldDescriptorProto,
        map_entries: dict[str, descriptor_pb2.DescriptorProto],
    ) -> tuple[str, bool]:
        """Return (type text, is_map)."""
        if field.type == FieldDescriptor.TYPE_GROUP:
            raise NotImplementedError(f"groups are not supported ({field.name})")
        if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM):
            short = field.type_name.rsplit(".", 1)[-1]
            entry = map_entries.get(short)
            if entry is not None and field.label == FieldDescriptor.LABEL_REPEATED:
                key, value = entry.field[0], entry.field[1]
                key_t, _ = self._field_type(key, {})
                value_t, _ = self._field_type(value, {})
                return f"map<{key_t}, {value_t}>", True
            return self._type_ref(field.type_name), False
        return _SCALAR_NAMES[field.type], False

    def _label(self, field: descriptor_pb2.FieldDescriptorProto, in_oneof: bool) -> str:
        if in_oneof:
            return ""
        if field.label == FieldDescriptor.LABEL_REPEATED:
            return "repeated "
        if self.editions:
            return ""
        if field.label == FieldDescriptor.LABEL_REQUIRED:
            return "required "
        if self.proto3:
            return "optional " if field.proto3_optional else ""
        return "optional "

    def _field(
        self,
        field: descriptor_pb2.FieldDescriptorProto,
        indent: str,
        map_entries: dict[str, descriptor_pb2.DescriptorProto],
        *,
        in_oneof: bool,
    ) -> None:
        type_text, is_map = self._field_type(field, map_entries)
        label = "" if is_map else self._label(field, in_oneof)
        extra: list[str] = []
        if field.HasField("default_value"):
            extra.append(f"default = {self._default(field)}")
        if field.HasField("json_name") and field.json_name != _json_default(field.name):
            extra.append(f"json_name = {_quote(field.json_name)}")
        opts = field.options if field.HasField("options") else None
        brackets = self._bracket_options(extra, opts, indent)
        self.lines.append(f"{indent}{label}{type_text} {field.name} = {field.number}{brackets};")

    def _default(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        value = field.default_value
        if field.type == FieldDescriptor.TYPE_STRING:
            return _quote(value)
        if field.type == FieldDescriptor.TYPE_BYTES:
            return f'"{value}"'  # already C-escaped in the descriptor
        return value  # numbers, inf/nan, true/false, enum value names

    # ---- enums, extensions, services

    def _enum(self, enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> None:
        inner = indent + _INDENT
        self.lines.append(f"{indent}enum {enum.name} {{")
        if enum.HasField("options"):
            self._statement_options(enum.options, inner)
        for value in enum.value:
            opts = value.options if value.HasField("options") else None
            brackets = self._bracket_options([], opts, inner)
            self.lines.append(f"{inner}{value.name} = {value.number}{brackets};")
        self._reserved(
            [(r.start, r.end) for r in enum.reserved_range], enum.reserved_name, inner
        )
        self.lines.append(f"{indent}}}")

    def _extensions(
        self, extensions: Iterable[descriptor_pb2.FieldDescriptorProto], indent: str
    ) -> None:
        for extendee, group in _group_by_extendee(extensions):
            self.lines.append(f"{indent}extend {self._type_ref(extendee)} {{")
            for ext in group:
                self._field(ext, indent + _INDENT, {}, in_oneof=False)
            self.lines.append(f"{indent}}}")
            self.lines.append("")
        if indent and self.lines and not self.lines[-1]:
            self.lines.pop()

    def _service(self, svc: descriptor_pb2.ServiceDescriptorProto) -> None:
        self.lines.append(f"service {svc.name} {{")
        if svc.HasField("options"):
            self._statement_options(svc.options, _INDENT)
        for method in svc.method:
            req = ("stream " if method.client_streaming else "") + self._type_ref(method.input_type)
            resp = ("stream " if method.server_streaming else "") + self._type_ref(
                method.output_type
            )
            head = f"{_INDENT}rpc {method.name}({req}) returns ({resp})"
            if method.HasField("options"):
                self.lines.append(head + " {")
                self._statement_options(method.options, _INDENT * 2)
                self.lines.append(_INDENT + "}")
            else:
                self.lines.append(head + ";")
        self.lines.append("}")


def _group_by_extendee(
    extensions: Iterable[descriptor_pb2.FieldDescriptorProto],
) -> Iterator[tuple[str, list[descriptor_pb2.FieldDescriptorProto]]]:
    """Group consecutive extensions with the same extendee (keeps descriptor order)."""
    current: str | None = None
    group: list[descriptor_pb2.FieldDescriptorProto] = []
    for ext in extensions:
        if ext.extendee != current and group:
            assert current is not None
            yield current, group
            group = []
        current = ext.extendee
        group.append(ext)
    if group:
        assert current is not None
        yield current, group


def print_file(fdp: descriptor_pb2.FileDescriptorProto, header: str = "") -> str:
    """Return .proto source text for ``fdp`` (comments are not in a descriptor)."""
    return _Printer(fdp, header).render()


def _validate_header(version: str) -> str:
    return (
        "// Copyright 2023-2026 Buf Technologies, Inc.\n"
        "// Licensed under the Apache License, Version 2.0 (Apache-2.0):\n"
        "// http://www.apache.org/licenses/LICENSE-2.0\n"
        "//\n"
        f"// Regenerated from the protovalidate=={version} wheel's embedded descriptor\n"
        f"// ({VALIDATE_PB_PATH}) by tools/vendor_protos.py. DO NOT EDIT.\n"
        "// The comments of the upstream file are not available in the descriptor, so\n"
        "// none appear here; declaration order within each kind is the upstream one.\n"
    )


# ------------------------------------------------------------------------- commands


def _render_all() -> dict[str, bytes]:
    """Return {relative path: content} for every vendored file."""
    src = google_source_dir()
    files = {name: (src / name).read_bytes() for name in google_proto_files(src)}
    text = print_file(load_validate_descriptor(), _validate_header(protovalidate_version()))
    files[VALIDATE_PROTO] = text.encode("utf-8")
    return files


def vendor(out_dir: Path) -> list[str]:
    """Write the vendored files under ``out_dir``, removing stale ones; return their paths."""
    files = _render_all()
    for owned in OWNED_DIRS:
        for stale in sorted((out_dir / owned).rglob("*.proto")):
            if stale.relative_to(out_dir).as_posix() not in files:
                stale.unlink()
    for rel, content in files.items():
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != content:
            dest.write_bytes(content)
    return sorted(files)


def check(out_dir: Path) -> list[str]:
    """Regenerate into a temp dir and return the differences against ``out_dir``."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        expected = set(vendor(fresh))
        for rel in sorted(expected):
            have = out_dir / rel
            if not have.is_file():
                problems.append(f"missing: {rel}")
            elif not filecmp.cmp(have, fresh / rel, shallow=False):
                problems.append(f"differs: {rel}")
        for owned in OWNED_DIRS:
            for extra in sorted((out_dir / owned).rglob("*.proto")):
                rel = extra.relative_to(out_dir).as_posix()
                if rel not in expected:
                    problems.append(f"stale: {rel}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="proto root (default: proto/)")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the files are out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("vendored protos are out of date: run tools/vendor_protos.py", file=sys.stderr)
            return 1
        print("vendored protos are up to date")
        return 0
    for rel in vendor(args.out):
        print(f"wrote {args.out / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
