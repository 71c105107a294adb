"""Regenerate everything under gen/ from proto/ (the one command behind `make gen`).

    python tools/gen.py           # rewrite gen/
    python tools/gen.py --check   # exit 1 if gen/ differs from what proto/ produces

Outputs:
  gen/python/       Python messages (`_pb2.py`), type stubs (`_pb2.pyi`), grpc.aio-compatible
                    stubs (`_pb2_grpc.py`) and their type stubs (`_pb2_grpc.pyi`, mypy-protobuf's
                    protoc-gen-mypy_grpc: sync and `grpc.aio` stub classes) for agentforge/*
                    and the vendored buf/validate. `agentforge/` itself has no `__init__.py`:
                    it is a namespace package shared with the hand-written client
                    (`agentforge/client`, `agentforge/cli` at the repository root).
                    googleapis' own modules come from the googleapis-common-protos wheel, which
                    is the very source of the vendored google/*.proto files.
  gen/python/agentforge/<pkg>/v1/*_service_client.py
                    Typed client facades, one async and one blocking class per service
                    (tools/gen_client.py) over the hand-written agentforge.client runtime.
  gen/docs/api-reference.md
                    The API reference for people, rendered from the descriptor's comments
                    (tools/api_docs.py).
  gen/descriptor/agentforge.binpb
                    A FileDescriptorSet with imports and source info, including
                    google/rpc/error_details.proto, loaded by Envoy's gRPC-JSON transcoder.
  gen/ts/           TypeScript messages and service descriptors for the dashboard, by
                    @bufbuild/protoc-gen-es through `buf generate` (buf.gen.yaml); the
                    plugin is dashboard/node_modules/.bin/protoc-gen-es (`make setup`).
  gen/envoy/rest_schema.lua
                    For every RPC whose google.api.http rule has a body: the HTTP method,
                    the path template as a Lua pattern, and the JSON field names the body
                    message (and every message nested in it) defines. Envoy's Lua filter
                    (envoy/rest_strict_body.lua) rejects a REST body with any other field,
                    which the transcoder would drop silently (envoy/README.md).

Generated code is never edited by hand; CI runs `--check`.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GEN = ROOT / "gen"

__all__ = ["generate", "main", "render_rest_schema"]


def _wkt_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).parent / "_proto"


def _protoc(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"-I{_wkt_include()}", *args]
    # protoc-gen-mypy_grpc reports each file it writes on stderr; keep only real errors.
    done = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    noise = [line for line in done.stderr.splitlines() if not line.startswith("Writing mypy to ")]
    if noise:
        print("\n".join(noise), file=sys.stderr)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, cmd)


def _mypy_grpc_plugin() -> str:
    """protoc-gen-mypy_grpc from mypy-protobuf, installed next to this interpreter."""
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    if not plugin.exists():
        found = shutil.which("protoc-gen-mypy_grpc")
        if found is None:
            raise SystemExit("protoc-gen-mypy_grpc not found: pip install -r requirements.txt (mypy-protobuf)")
        plugin = Path(found)
    return str(plugin)


def _sources(sub: str) -> list[str]:
    return sorted(str(p.relative_to(PROTO)) for p in (PROTO / sub).rglob("*.proto"))


def generate(out: Path) -> None:
    """Write the whole gen/ tree into `out` (which must not exist or be empty)."""
    py = out / "python"
    desc = out / "descriptor"
    py.mkdir(parents=True, exist_ok=True)
    desc.mkdir(parents=True, exist_ok=True)
    ours = _sources("agentforge")
    _protoc(
        [
            f"--python_out={py}",
            f"--pyi_out={py}",
            f"--grpc_python_out={py}",
            f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
            f"--mypy_grpc_out={py}",
            *ours,
            *_sources("buf"),
        ]
    )
    _protoc(
        [
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={desc / 'agentforge.binpb'}",
            *ours,
            "google/rpc/error_details.proto",
        ]
    )
    # Make every generated directory a regular package so tools and type checkers
    # resolve `agentforge.training.v1` the same way the interpreter does -- except the
    # top-level `agentforge/`, a namespace package (PEP 420) that the hand-written
    # `agentforge.client` and `agentforge.cli` (repository root) share with gen/python.
    for d in sorted(p for p in py.rglob("*") if p.is_dir()):
        if d != py / "agentforge":
            (d / "__init__.py").touch()
    from gen_client import render_all  # tools/ is on sys.path when run as a script

    render_all(desc / "agentforge.binpb", py)
    _generate_ts(out)
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    from api_docs import render  # tools/ is on sys.path when run as a script

    (docs / "api-reference.md").write_text(render(desc / "agentforge.binpb"))
    lua = out / "envoy"
    lua.mkdir(parents=True, exist_ok=True)
    (lua / "rest_schema.lua").write_text(render_rest_schema(desc / "agentforge.binpb"))
    (out / "README.md").write_text(
        "# gen/\n\nGenerated from `proto/` by `make gen` (`python tools/gen.py`). "
        "Do not edit; CI fails when this tree is stale.\n"
    )


#: protoc-gen-es, installed by `npm ci` in dashboard/ (pinned there).
PROTOC_GEN_ES = ROOT / "dashboard" / "node_modules" / ".bin" / "protoc-gen-es"


def _generate_ts(out: Path) -> None:
    """gen/ts/: the dashboard's TypeScript (buf.gen.yaml), ours plus what they import.

    google/rpc/error_details.proto is named too: the dashboard reads BadRequest,
    ErrorInfo and the other details of an error from `grpc-status-details-bin`.
    """
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(f"{PROTOC_GEN_ES.relative_to(ROOT)} is missing: run `make setup` (npm ci in dashboard/)")
    buf = Path(sys.executable).parent / "buf"
    cmd = [
        str(buf if buf.exists() else "buf"), "generate", "--template", "buf.gen.yaml",
        "--output", str(out), "--path", "proto/agentforge",
        "--path", "proto/google/rpc/error_details.proto",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)


# --- gen/envoy/rest_schema.lua ----------------------------------------------------------

#: Messages whose JSON form is not "one key per field" (Any carries "@type", Struct and
#: Value hold arbitrary JSON, the rest are strings or bare values): not checked inside.
_OPAQUE_PACKAGE = ".google.protobuf."
_TYPE_MESSAGE = 11  # FieldDescriptorProto.TYPE_MESSAGE
_LABEL_REPEATED = 3


def _lua_str(text: str) -> str:
    """A double-quoted Lua string literal for printable ASCII."""
    if not all(" " <= c <= "~" for c in text):
        raise ValueError(f"unexpected character in {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _template_pattern(template: str) -> str:
    """A google.api.http path template as an anchored Lua pattern.

    ``{var=sub}`` becomes ``sub``, ``{var}`` and ``*`` one segment (``[^/]+``), ``**``
    any rest (``.*``, also swallowing the ``/`` before it, since ``**`` may match zero
    segments); literals (segments and the ``:verb``) are escaped.
    """
    template = re.sub(r"\{[^}=]+\}", "*", template)
    template = re.sub(r"\{[^}=]+=([^}]+)\}", r"\1", template)
    out: list[str] = []
    i = 0
    while i < len(template):
        if template.startswith("/**", i):
            out.append(".*")
            i += 3
        elif template.startswith("**", i):
            out.append(".*")
            i += 2
        elif template[i] == "*":
            out.append("[^/]+")
            i += 1
        else:
            c = template[i]
            out.append("%" + c if c in "^$()%.[]*+-?" else c)
            i += 1
    return "^" + "".join(out) + "$"


def render_rest_schema(descriptor_set: Path) -> str:
    """The Lua table loaded by envoy/rest_strict_body.lua (see gen/envoy/rest_schema.lua)."""
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}

    def collect(prefix: str, msgs: Any) -> None:
        for m in msgs:
            messages[f"{prefix}.{m.name}"] = m
            collect(f"{prefix}.{m.name}", m.nested_type)

    for file in fds.file:
        collect(f".{file.package}" if file.package else "", file.message_type)

    routes: list[tuple[int, str]] = []
    wanted: list[str] = []
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    if not binding.body or verb is None or verb == "custom":
                        continue
                    template = getattr(binding, verb)
                    root, prefix = method.input_type, ""
                    if binding.body != "*":
                        field = next(f for f in messages[root].field if f.name == binding.body)
                        if field.type != _TYPE_MESSAGE or field.label == _LABEL_REPEATED:
                            continue  # a scalar or list body: nothing keyed to check
                        root, prefix = field.type_name, field.json_name
                    if root.startswith(_OPAQUE_PACKAGE):
                        continue
                    wanted.append(root)
                    rpc = f"{file.package}.{service.name}/{method.name}"
                    # A template with a ``:verb`` is tried before one without, so
                    # ``[^/]+$`` never claims ``x:cancel``; then longer (more literal) first.
                    order = (0 if re.search(r":[A-Za-z]+$", template) else 1, -len(template))
                    routes.append((order, (
                        f"    {{method = {_lua_str(verb.upper())}, pattern = {_lua_str(_template_pattern(template))},\n"
                        f"     template = {_lua_str(template)}, rpc = {_lua_str(rpc)},\n"
                        f"     message = {_lua_str(root[1:])}, prefix = {_lua_str(prefix)},\n"
                        f"     stream = {'true' if method.client_streaming else 'false'}}},"
                    )))

    # Every message reachable from a body, once (recursive types refer by name).
    seen: dict[str, list[str]] = {}
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        lines: list[str] = []
        for f in messages[name].field:
            entry = "true"
            if f.type == _TYPE_MESSAGE and not f.type_name.startswith(_OPAQUE_PACKAGE):
                target = messages[f.type_name]
                if target.options.map_entry:
                    (value,) = [v for v in target.field if v.name == "value"]
                    if value.type == _TYPE_MESSAGE and not value.type_name.startswith(_OPAQUE_PACKAGE):
                        entry = f"{{map_of = {_lua_str(value.type_name[1:])}}}"
                        wanted.append(value.type_name)
                elif f.label == _LABEL_REPEATED:
                    entry = f"{{list_of = {_lua_str(f.type_name[1:])}}}"
                    wanted.append(f.type_name)
                else:
                    entry = f"{{message = {_lua_str(f.type_name[1:])}}}"
                    wanted.append(f.type_name)
            for key in dict.fromkeys((f.json_name, f.name)):
                lines.append(f"    [{_lua_str(key)}] = {entry},")
        seen[name] = lines

    out = [
        "-- GENERATED by tools/gen.py from gen/descriptor/agentforge.binpb: do not edit.",
        "-- The REST bodies Envoy's Lua filter checks (envoy/rest_strict_body.lua).",
        "-- routes: one per google.api.http binding with a body; `pattern` matches the path",
        "--   (no query), `message` is the body's message, `prefix` the body field's JSON name",
        "--   (\"\" for body \"*\"), `stream` a client stream (a JSON array of messages).",
        "-- messages: JSON name and proto name of every field -> true (not checked inside),",
        "--   {message = M}, {list_of = M} (each element) or {map_of = M} (each value).",
        "return {",
        "  routes = {",
        *[text for _, text in sorted(routes, key=lambda r: r[0])],
        "  },",
        "  messages = {",
    ]
    for name in sorted(seen):
        out += [f"    [{_lua_str(name[1:])}] = {{", *["  " + line for line in seen[name]], "    },"]
    out += ["  },", "}", ""]
    return "\n".join(out)


def _diff(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [f"only in {a.name}: {n}" for n in cmp.left_only] + [f"only in fresh: {n}" for n in cmp.right_only]
    out += [f"differs: {n}" for n in cmp.diff_files]
    for name, sub in cmp.subdirs.items():
        out += [f"{name}/{line}" for line in _diff(a / name, b / name)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        generate(fresh)
        if args.check:
            if not GEN.exists():
                print("gen/ is missing: run `make gen`", file=sys.stderr)
                return 1
            problems = _diff(GEN, fresh)
            if problems:
                print("gen/ is stale (run `make gen`):\n  " + "\n  ".join(problems), file=sys.stderr)
                return 1
            print("gen/ is up to date")
            return 0
        if GEN.exists():
            shutil.rmtree(GEN)
        shutil.copytree(fresh, GEN)
        print(f"wrote {GEN.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
