"""Render the typed client facades (``gen/python/agentforge/<pkg>/v1/*_client.py``).

For every service in the descriptor set, one module with two classes, an async one
(``AsyncTrainingService``) and a blocking one (``TrainingService``), with one method per
RPC named like it in snake_case (``CreateTrainingJob`` → ``create_training_job``), typed
with the generated messages and documented with the RPC's proto comment. The calls
themselves (metadata, deadlines, retries, errors, resumable watches) are the hand-written
``agentforge.client._base`` classes these subclass: only the per-RPC surface is
generated, so it cannot drift from the contracts.

Idempotency (which methods the client may resend after UNAVAILABLE) is decided here from
the contract: reads (``Get*``, ``List*``, ``Watch*``, ``Download*``, ``Subscribe``) and
every method whose request has a ``request_id`` idempotency key (the client fills one in
when it is empty). Server streams whose request has a ``cursor`` are resumable.

``tools/gen.py`` calls :func:`render_all`; generated code is never edited by hand.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from google.protobuf import descriptor_pb2

__all__ = ["render_all"]

_READ_PREFIXES = ("Get", "List", "Watch", "Download")
_READ_METHODS = {"Subscribe"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _comments(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    out: dict[tuple[int, ...], str] = {}
    for loc in fd.source_code_info.location:
        text = loc.leading_comments or loc.trailing_comments
        if text.strip():
            out[tuple(loc.path)] = textwrap.dedent(text).strip()
    return out


class _Types:
    """Full proto message name → (python module, class path) over the descriptor set."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.where: dict[str, tuple[str, str]] = {}
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        for fd in fds.file:
            module = fd.name.removesuffix(".proto").replace("/", ".").replace("-", "_") + "_pb2"

            def walk(prefix: str, path: str, msgs: list[descriptor_pb2.DescriptorProto]) -> None:
                for m in msgs:
                    full = f"{prefix}.{m.name}" if prefix else m.name
                    cls = f"{path}.{m.name}" if path else m.name
                    self.where["." + full] = (module, cls)
                    self.messages["." + full] = m
                    walk(full, cls, list(m.nested_type))

            walk(fd.package, "", list(fd.message_type))


def _escape_doc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _render_service(
    fd: descriptor_pb2.FileDescriptorProto, index: int, types: _Types
) -> str:
    svc = fd.service[index]
    comments = _comments(fd)
    full = f"{fd.package}.{svc.name}"
    aliases: dict[str, str] = {}

    def ref(type_name: str) -> str:
        module, cls = types.where[type_name]
        alias = aliases.setdefault(module, f"_m{len(aliases)}")
        return f"{alias}.{cls}"

    idempotent: list[str] = []
    methods_async: list[str] = []
    methods_sync: list[str] = []
    for i, m in enumerate(svc.method):
        req, resp = ref(m.input_type), ref(m.output_type)
        req_fields = {f.name for f in types.messages[m.input_type].field}
        keyed = "request_id" in req_fields
        read = m.name.startswith(_READ_PREFIXES) or m.name in _READ_METHODS
        if read or keyed:
            idempotent.append(m.name)
        doc = comments.get((6, index, 2, i), f"Calls ``{m.name}``.")
        rest = [
            "",
            f"Request: ``{m.input_type.lstrip('.')}`` (pass one, or its fields as keyword",
            f"arguments). Returns ``{m.output_type.lstrip('.')}``"
            + (" messages as they arrive." if m.server_streaming else "."),
        ]
        if keyed:
            rest.append("A ``request_id`` (UUID) is filled in when empty, so a retry cannot act twice.")
        if read or keyed:
            rest.append("Resent on UNAVAILABLE (idempotent).")
        else:
            rest.append("Sent once (not idempotent): UNAVAILABLE is raised, never retried.")
        resumable = m.server_streaming and "cursor" in req_fields
        reconnects = resumable or (m.server_streaming and m.name.startswith("Watch"))
        if resumable:
            rest.append(
                "Reconnects after UNAVAILABLE and resumes from the cursor of the last message it"
                " yielded, never yielding one twice; ``stream_end`` is not yielded."
            )
        elif reconnects:
            rest.append(
                "Reconnects after UNAVAILABLE (every message is a full snapshot, so nothing is"
                " lost); ``stream_end`` is not yielded."
            )
        rest.append("Raises :class:`agentforge.client.ApiError` (a subclass per status code).")
        body = _escape_doc(doc + "\n" + "\n".join(rest))
        docstring = textwrap.indent('"""' + body + '\n"""', " " * 8).lstrip()
        name = _snake(m.name)
        common = "timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()"
        if m.client_streaming and not m.server_streaming:
            methods_async.append(
                f"    async def {name}(self, requests: AsyncIterable[{req}] | Iterable[{req}], /, *, {common}) -> {resp}:\n"
                f"        {docstring}\n"
                f"        return await self._stream_unary({m.name!r}, {resp}, requests, timeout, metadata)\n"
            )
            methods_sync.append(
                f"    def {name}(self, requests: Iterable[{req}], /, *, {common}) -> {resp}:\n"
                f"        {docstring}\n"
                f"        return self._stream_unary({m.name!r}, {resp}, requests, timeout, metadata)\n"
            )
            continue
        if m.client_streaming:
            continue  # no bidi streams in the contracts
        sig = f"self, request: {req} | None = None, /, *, {common}, **fields: Any"
        args = f"{m.name!r}, {req}, {resp}, request, fields, timeout, metadata"
        if m.server_streaming:
            call = "_resumable_stream" if reconnects else "_unary_stream"
            methods_async.append(
                f"    def {name}({sig}) -> AsyncIterator[{resp}]:\n"
                f"        {docstring}\n"
                f"        return self.{call}({args})\n"
            )
            methods_sync.append(
                f"    def {name}({sig}) -> Iterator[{resp}]:\n"
                f"        {docstring}\n"
                f"        return self.{call}({args})\n"
            )
        else:
            methods_async.append(
                f"    async def {name}({sig}) -> {resp}:\n"
                f"        {docstring}\n"
                f"        return await self._unary({args}, keyed={keyed})\n"
            )
            methods_sync.append(
                f"    def {name}({sig}) -> {resp}:\n"
                f"        {docstring}\n"
                f"        return self._unary({args}, keyed={keyed})\n"
            )
    svc_doc = _escape_doc(comments.get((6, index), f"The {svc.name}."))
    imports = "\n".join(f"from {mod.rpartition('.')[0]} import {mod.rpartition('.')[2]} as {alias}"
                        for mod, alias in sorted(aliases.items(), key=lambda kv: kv[1]))
    idem = "".join(f"    {n!r},\n" for n in idempotent)
    head = f'''"""Typed client for ``{full}`` ({fd.name}).

@generated by tools/gen_client.py (``make gen``). Do not edit.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from agentforge.client._base import AsyncServiceBase, SyncServiceBase
{imports}

__all__ = ["IDEMPOTENT_METHODS", "SERVICE", "Async{svc.name}", "{svc.name}"]

#: Full service name.
SERVICE = {full!r}
#: Methods resent after UNAVAILABLE: reads, and calls keyed by a ``request_id``.
IDEMPOTENT_METHODS: tuple[str, ...] = (
{idem})

'''
    doc_block = textwrap.indent('"""' + svc_doc + '\n"""', "    ").lstrip()
    async_cls = (
        f"class Async{svc.name}(AsyncServiceBase):\n    {doc_block}\n\n"
        f"    _service = SERVICE\n\n" + "\n".join(methods_async)
    )
    sync_cls = (
        f"class {svc.name}(SyncServiceBase):\n    {doc_block}\n\n"
        f"    _service = SERVICE\n\n" + "\n".join(methods_sync)
    )
    return head + async_cls + "\n\n" + sync_cls


def render_all(descriptor_set: Path, out: Path) -> list[Path]:
    """Write one ``*_client.py`` per ``agentforge`` service under ``out`` (gen/python)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    types = _Types(fds)
    written = []
    for fd in fds.file:
        if not fd.package.startswith("agentforge."):
            continue
        for index in range(len(fd.service)):
            path = out / (fd.name.removesuffix(".proto") + "_client.py")
            path.write_text(_render_service(fd, index, types))
            written.append(path)
    return written
