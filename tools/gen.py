"""Regenerate everything under gen/ from proto/ (the one command behind `make gen`).

    python tools/gen.py           # rewrite gen/
    python tools/gen.py --check   # exit 1 if gen/ differs from what proto/ produces

Outputs:
  gen/python/       Python messages (`_pb2.py`), type stubs (`_pb2.pyi`) and grpc.aio-compatible
                    stubs (`_pb2_grpc.py`) for agentforge/* and the vendored buf/validate.
                    googleapis' own modules come from the googleapis-common-protos wheel, which
                    is the very source of the vendored google/*.proto files.
  gen/docs/api-reference.md
                    The API reference for people, rendered from the descriptor's comments
                    (tools/api_docs.py).
  gen/descriptor/agentforge.binpb
                    A FileDescriptorSet with imports and source info, including
                    google/rpc/error_details.proto, loaded by Envoy's gRPC-JSON transcoder.

Generated code is never edited by hand; CI runs `--check`.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GEN = ROOT / "gen"

__all__ = ["generate", "main"]


def _wkt_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).parent / "_proto"


def _protoc(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"-I{_wkt_include()}", *args]
    subprocess.run(cmd, check=True, cwd=ROOT)


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
    # resolve `agentforge.training.v1` the same way the interpreter does.
    for d in sorted(p for p in py.rglob("*") if p.is_dir()):
        (d / "__init__.py").touch()
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    from api_docs import render  # tools/ is on sys.path when run as a script

    (docs / "api-reference.md").write_text(render(desc / "agentforge.binpb"))
    (out / "README.md").write_text(
        "# gen/\n\nGenerated from `proto/` by `make gen` (`python tools/gen.py`). "
        "Do not edit; CI fails when this tree is stale.\n"
    )


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
