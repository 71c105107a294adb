"""The vendored third-party protos in proto/ match the installed wheels exactly.

* google/api and google/rpc files are byte-identical to googleapis-common-protos'.
* buf/validate/validate.proto, printed by tools/vendor_protos.py from the descriptor
  embedded in the protovalidate wheel, compiles with protoc to an equal descriptor.
* ``tools/vendor_protos.py --check`` passes, so proto/ is what the script produces.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    message,
    message_factory,
    text_format,
    timestamp_pb2,
    unknown_fields,
)

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
SCRIPT = REPO / "tools" / "vendor_protos.py"
BUF = REPO / ".venv" / "bin" / "buf"
WKT_INCLUDE = Path(grpc_tools.__file__).parent / "_proto"
VALIDATE = "buf/validate/validate.proto"

GOOGLE_FILES = [
    "google/api/annotations.proto",
    "google/api/client.proto",
    "google/api/field_behavior.proto",
    "google/api/http.proto",
    "google/api/httpbody.proto",
    "google/api/launch_stage.proto",
    "google/api/resource.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
]


def _embedded_validate_descriptor() -> bytes:
    """The serialized FileDescriptorProto in protovalidate's generated module.

    Read independently of tools/vendor_protos.py, so the test does not trust its parser.
    """
    dist = importlib.metadata.distribution("protovalidate")
    path = Path(str(dist.locate_file("protovalidate/_gen/buf/validate/validate_pb.py")))
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["_DESC"]
            and isinstance(node.value, ast.Call)
        ):
            literal = node.value.args[0]
            assert isinstance(literal, ast.Constant) and isinstance(literal.value, bytes)
            return literal.value
    raise AssertionError(f"_DESC literal not found in {path}")


def _option_aware_fdp_class(embedded: bytes) -> type[message.Message]:
    """FileDescriptorProto class from a pool that knows validate.proto's extensions.

    Parsing with it turns the custom options (``buf.validate.predefined`` on FieldOptions)
    into real extension fields instead of opaque unknown bytes, so equality compares
    option values, not one serializer's byte order.
    """
    pool = descriptor_pool.DescriptorPool()
    for module in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(embedded)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.FileDescriptorProto")
    )


def _assert_no_unknown_fields(msg: message.Message) -> None:
    assert len(unknown_fields.UnknownFieldSet(msg)) == 0, msg.DESCRIPTOR.full_name
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            for item in value if fd.is_repeated else [value]:
                _assert_no_unknown_fields(item)


@pytest.fixture(scope="module")
def compiled_validate(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("protoc") / "validate.binpb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{WKT_INCLUDE}",
            f"--descriptor_set_out={out}",
            VALIDATE,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert [f.name for f in files] == [VALIDATE]
    return files[0].SerializeToString()


def test_printed_validate_proto_compiles_to_the_wheels_descriptor(compiled_validate: bytes) -> None:
    embedded = _embedded_validate_descriptor()
    fdp_class = _option_aware_fdp_class(embedded)
    expected = fdp_class.FromString(embedded)
    actual = fdp_class.FromString(compiled_validate)
    # protoc records comments/spans only with --include_source_info; clear it anyway so
    # the comparison is about the schema. No other normalization is applied.
    expected.ClearField("source_code_info")
    actual.ClearField("source_code_info")
    _assert_no_unknown_fields(expected)
    _assert_no_unknown_fields(actual)
    if actual != expected:
        pytest.fail(
            "descriptor mismatch\n--- embedded\n"
            + text_format.MessageToString(expected)[:4000]
            + "\n--- compiled\n"
            + text_format.MessageToString(actual)[:4000]
        )


def test_buf_builds_the_vendored_files_to_the_same_descriptor(tmp_path: Path) -> None:
    """buf (a second compiler) accepts every vendored file and agrees on validate.proto.

    Built from a copy with its own buf.yaml so the check does not depend on the
    project's module config. buf adds its own image fields, which the option-aware
    class does not know; they are discarded before comparing.
    """
    if not BUF.exists():
        pytest.skip("buf is not installed in .venv")
    for owned in ("google", "buf"):
        shutil.copytree(PROTO / owned, tmp_path / "proto" / owned)
    (tmp_path / "buf.yaml").write_text("version: v2\nmodules:\n  - path: proto\n")
    image = tmp_path / "image.binpb"
    result = subprocess.run(
        [str(BUF), "build", "--exclude-source-info", "-o", str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    built = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file}
    assert {VALIDATE, *GOOGLE_FILES} <= set(built)
    embedded = _embedded_validate_descriptor()
    fdp_class = _option_aware_fdp_class(embedded)
    actual = fdp_class.FromString(built[VALIDATE].SerializeToString())
    actual.DiscardUnknownFields()
    assert actual == fdp_class.FromString(embedded)


def test_printed_validate_proto_keeps_custom_rule_options(compiled_validate: bytes) -> None:
    """The CEL rules (custom options) survived: count them, they are the payload."""
    embedded = _embedded_validate_descriptor()
    fdp_class = _option_aware_fdp_class(embedded)
    pool = fdp_class.DESCRIPTOR.file.pool
    predefined = pool.FindExtensionByName("buf.validate.predefined")

    def rule_ids(raw: bytes) -> list[str]:
        fdp = fdp_class.FromString(raw)
        return [
            rule.id
            for msg in fdp.message_type
            for field in msg.field
            for rule in field.options.Extensions[predefined].cel
        ]

    ids = rule_ids(compiled_validate)
    assert "float.const" in ids and "string.email" in ids
    assert ids == rule_ids(embedded)


def test_printed_validate_proto_header_names_its_source() -> None:
    text = (PROTO / VALIDATE).read_text(encoding="utf-8")
    version = importlib.metadata.version("protovalidate")
    assert f"protovalidate=={version}" in text
    assert "Apache" in text and "Buf Technologies" in text
    assert 'syntax = "proto2";' in text


@pytest.mark.parametrize("name", GOOGLE_FILES)
def test_google_proto_is_byte_identical_to_installed_package(name: str) -> None:
    dist = importlib.metadata.distribution("googleapis-common-protos")
    installed = Path(str(dist.locate_file(name)))
    assert (PROTO / name).read_bytes() == installed.read_bytes()


def test_vendored_set_is_closed_under_imports() -> None:
    """Every non-well-known import of a vendored google file is vendored too."""
    vendored = {p.relative_to(PROTO).as_posix() for p in (PROTO / "google").rglob("*.proto")}
    assert vendored == set(GOOGLE_FILES)
    for name in GOOGLE_FILES:
        for line in (PROTO / name).read_text(encoding="utf-8").splitlines():
            if line.startswith("import "):
                dep = line.split('"')[1]
                assert dep.startswith("google/protobuf/") or dep in vendored, (name, dep)


def test_vendor_script_check_passes_when_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_vendor_script_check_fails_on_drift(tmp_path: Path) -> None:
    """--check against a copy with one edited file reports it and exits 1."""
    for rel in [VALIDATE, *GOOGLE_FILES]:
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((PROTO / rel).read_bytes())
    (tmp_path / "google/rpc/code.proto").write_text("// edited\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert "differs: google/rpc/code.proto" in result.stderr
