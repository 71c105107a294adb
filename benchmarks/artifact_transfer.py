"""Artifact upload and download speed, and the model service's memory while they run.

One run, through the public API of a real mesh (the launcher: embedded Valkey, the real
model service, Envoy from the template), on 127.0.0.1:

1. **baseline**: a local disk copy of the same ``--size-mib`` file (random bytes, in the
   same file system as the registry's data), ``shutil.copyfile`` + ``fsync`` — what the
   registry must at least do with the bytes (it keeps them durably) — measured in the
   same run, best of ``--repeat``.
2. ``UploadModelArtifact`` of that file (``--chunk-mib`` chunks read from the file as the
   stream goes, the sha256 computed beforehand as a client must, not timed), to a new
   version, through Envoy (gRPC, h2c) and, for comparison, directly to the service;
3. ``DownloadModelArtifact`` of it (gRPC, chunks written to a file, the sha256 checked
   after), through Envoy and directly; and the REST download route through Envoy
   (``GET /v1/models/*/versions/*:download``: a JSON array of messages whose ``data``
   is base64), streamed with httpx. The REST upload route takes one JSON body of at most
   8 MiB (the edge's buffer limit; the contract says REST clients upload with gRPC), so
   it is not measured at this size.

Each transfer prints MB/s and its ratio to the disk copy (target ≥ 0.5×), and the model
service's RSS (``/proc`` via psutil, sampled every 10 ms) peak minus its RSS just before
the transfer (target: flat, not proportional to the file size).

Run::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/artifact_transfer.py --size-mib 256
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "gen" / "python"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from agentforge.model.v1 import model_pb2, model_service_pb2_grpc, model_version_pb2  # noqa: E402
from agentforge.model.v1 import request_response_pb2 as rr  # noqa: E402

from services.launcher.mesh import Mesh, MeshConfig  # noqa: E402

MIB = 1024 * 1024
#: What a client must accept to receive the service's largest messages (4 MiB chunks + metadata).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * MIB), ("grpc.max_send_message_length", 16 * MIB)]


class RssSampler:
    """Peak RSS of one process, sampled on a thread every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = self.peak = self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / MIB


def disk_copy(src: Path, dst: Path) -> float:
    """Seconds for copyfile + fsync of ``dst`` (the file's data durable, as the registry keeps it)."""
    dst.unlink(missing_ok=True)
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


async def upload(stub: Any, md: Any, name: str, src: Path, sha: str, chunk: int) -> rr.UploadModelArtifactResponse:
    size = src.stat().st_size

    async def messages() -> AsyncIterator[rr.UploadModelArtifactRequest]:
        yield rr.UploadModelArtifactRequest(header=rr.UploadHeader(
            name=name, size_bytes=size, sha256=sha, content_type="application/octet-stream",
            format=model_version_pb2.ARTIFACT_FORMAT_STATE_DICT))
        with src.open("rb") as f:
            offset = 0
            while data := f.read(chunk):
                yield rr.UploadModelArtifactRequest(chunk=rr.UploadChunk(offset=offset, data=data))
                offset += len(data)

    response = await stub.UploadModelArtifact(messages(), metadata=md, timeout=600)
    if not response.complete or response.sha256 != sha:
        raise RuntimeError(f"upload of {name} incomplete or wrong: {response.committed_bytes} bytes, "
                           f"sha256 {response.sha256}")
    return response


async def download(stub: Any, md: Any, name: str, dst: Path, sha: str, chunk: int) -> None:
    digest = hashlib.sha256()
    with dst.open("wb") as f:
        async for message in stub.DownloadModelArtifact(
                rr.DownloadModelArtifactRequest(name=name, chunk_size=chunk), metadata=md, timeout=600):
            f.write(message.data)
            digest.update(message.data)
    if digest.hexdigest() != sha:
        raise RuntimeError(f"download of {name}: sha256 {digest.hexdigest()} != {sha}")
    dst.unlink()


async def rest_download(client: httpx.AsyncClient, name: str, dst: Path, sha: str) -> None:
    """The REST route: a JSON array of DownloadModelArtifactResponse, decoded as it streams."""
    decoder = json.JSONDecoder()
    digest = hashlib.sha256()
    buffer = ""
    with dst.open("wb") as f:
        async with client.stream("GET", f"/v1/{name}:download") as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"REST download: HTTP {resp.status_code} {(await resp.aread())[:300]!r}")
            async for text in resp.aiter_text():
                buffer += text
                while True:
                    start = buffer.find("{")
                    if start < 0:
                        buffer = ""
                        break
                    try:
                        obj, end = decoder.raw_decode(buffer, start)
                    except json.JSONDecodeError:
                        buffer = buffer[start:]
                        break
                    data = base64.b64decode(obj.get("data", ""))
                    f.write(data)
                    digest.update(data)
                    buffer = buffer[end:]
    if digest.hexdigest() != sha:
        raise RuntimeError(f"REST download of {name}: sha256 {digest.hexdigest()} != {sha}")
    dst.unlink()


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def timed(pids: dict[str, int], fn: Callable[[], Awaitable[object]]) -> tuple[float, float, dict[str, float]]:
    """Seconds, the model service's RSS growth (MiB) and CPU seconds of each process in ``pids``."""
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    with RssSampler(pids["model"]) as rss:
        cpu0 = {name: _cpu_s(p) for name, p in procs.items()}
        t0 = time.perf_counter()
        await fn()
        seconds = time.perf_counter() - t0
        cpu = {name: _cpu_s(p) - cpu0[name] for name, p in procs.items()}
    return seconds, rss.growth_mib, cpu


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from services.shared.auth import ensure_dev_secrets, mint_token
    from services.shared.authz import outgoing_metadata

    ensure_dev_secrets()
    size = args.size_mib * MIB
    chunk = args.chunk_kib * 1024
    results: dict[str, Any] = {"size_bytes": size, "chunk_bytes": chunk, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-", dir=args.tmp_dir) as tmp, Mesh(MeshConfig(
        services=("model",), data_dir=Path(tmp) / "data", run_dir=Path(tmp) / "run",
        env={f"EDGE_RATE_LIMIT_{c}": "1000000/1000000" for c in ("READ", "WRITE", "STREAM")},
    )) as mesh:
        src = Path(tmp) / "weights.bin"
        with src.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        t0 = time.perf_counter()
        sha = sha256_file(src)
        results["client_sha256_s"] = time.perf_counter() - t0
        pids = {"model": mesh.process("model").pid, "envoy": mesh.process("envoy").pid}

        copies = [disk_copy(src, Path(tmp) / "data" / "copy.bin") for _ in range(args.repeat)]
        results["disk_copy_s"] = min(copies)
        base_mbps = size / MIB / results["disk_copy_s"]

        token = mint_token("operator", subject="bench-artifacts", ttl_s=3600)
        paths = {
            "envoy": (grpc.aio.insecure_channel(mesh.edge_addr, options=CHANNEL_OPTIONS),
                      (("authorization", f"Bearer {token}"),)),
            "direct": (grpc.aio.insecure_channel(f"127.0.0.1:{mesh.grpc_ports['model']}", options=CHANNEL_OPTIONS),
                       tuple(outgoing_metadata())),
        }
        rest = httpx.AsyncClient(base_url=mesh.edge_url, headers={"authorization": f"Bearer {token}"},
                                 timeout=600, trust_env=False)
        try:
            stub_e = model_service_pb2_grpc.ModelServiceStub(paths["envoy"][0])
            md_e = paths["envoy"][1]
            await stub_e.CreateModel(rr.CreateModelRequest(model_id="bench", model=model_pb2.Model()),
                                     metadata=md_e)

            async def new_version() -> str:
                v = await stub_e.CreateModelVersion(rr.CreateModelVersionRequest(
                    parent="models/bench", model_version=model_version_pb2.ModelVersion()), metadata=md_e)
                return v.name

            # Warm-up: one small upload and download on each path (connections, code paths).
            small = Path(tmp) / "small.bin"
            small.write_bytes(os.urandom(3 * chunk + 17))
            small_sha = sha256_file(small)
            for ch, md in paths.values():
                stub = model_service_pb2_grpc.ModelServiceStub(ch)
                name = await new_version()
                await upload(stub, md, name, small, small_sha, chunk)
                await download(stub, md, name, Path(tmp) / "small.out", small_sha, chunk)
            await asyncio.sleep(1)

            def row(what: str, measured: tuple[float, float, dict[str, float]]) -> None:
                seconds, growth, cpu = measured
                mbps = size / MIB / seconds
                per_gib = {k: v * 1024 / (size / MIB) for k, v in cpu.items()}
                if "direct" in what:
                    per_gib.pop("envoy")
                results["rows"].append({"what": what, "seconds": seconds, "mib_per_s": mbps,
                                        "vs_disk_copy": mbps / base_mbps, "rss_growth_mib": growth,
                                        "cpu_s_per_gib": per_gib})
                print(f"  {what:<32} {seconds:7.2f} s {mbps:8.1f} MiB/s  {mbps / base_mbps:5.2f}x copy  "
                      f"RSS +{growth:6.1f} MiB  CPU s/GiB {per_gib}", file=sys.stderr, flush=True)

            uploaded: dict[str, str] = {}
            for label in args.paths:
                ch, md = paths[label]
                stub = model_service_pb2_grpc.ModelServiceStub(ch)
                for r in range(args.repeat):
                    name = await new_version()
                    row(f"upload gRPC {label}", await timed(pids, lambda: upload(stub, md, name, src, sha, chunk)))
                    uploaded[label] = name
                for r in range(args.repeat):
                    name = uploaded[label]
                    row(f"download gRPC {label}", await timed(
                        pids, lambda: download(stub, md, name, Path(tmp) / "out.bin", sha, chunk)))
            if args.rest and "envoy" in uploaded:
                for r in range(args.repeat):
                    row("download REST (JSON) envoy", await timed(
                        pids, lambda: rest_download(rest, uploaded["envoy"], Path(tmp) / "out.bin", sha)))
        finally:
            await rest.aclose()
            for ch, _ in paths.values():
                await ch.close()
    return results


def best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fastest round of each kind (the disk copy is also the best of its rounds)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["what"] not in out or r["seconds"] < out[r["what"]]["seconds"]:
            out[r["what"]] = {**r, "rss_growth_mib": max(x["rss_growth_mib"] for x in rows if x["what"] == r["what"])}
    return list(out.values())


def report(results: dict[str, Any]) -> None:
    size_mib = results["size_bytes"] / MIB
    copy_s = results["disk_copy_s"]
    print(f"{size_mib:.0f} MiB artifact, {results['chunk_bytes'] // 1024} KiB chunks; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"client sha256 beforehand: {results['client_sha256_s']:.2f} s (not in the times below)")
    print(f"{'transfer':<32}{'seconds':>9}{'MiB/s':>9}{'vs copy':>9}{'service RSS peak - before':>28}"
          f"{'CPU s/GiB service':>19}{'envoy':>7}")
    print(f"{'local disk copy (+fsync)':<32}{copy_s:>9.2f}{size_mib / copy_s:>9.1f}{'1.00x':>9}")
    for r in best(results["rows"]):
        cpu = r["cpu_s_per_gib"]
        envoy = f"{cpu['envoy']:>7.2f}" if "envoy" in cpu else f"{'-':>7}"
        print(f"{r['what']:<32}{r['seconds']:>9.2f}{r['mib_per_s']:>9.1f}{r['vs_disk_copy']:>8.2f}x"
              f"{r['rss_growth_mib']:>24.1f} MiB{cpu['model']:>19.2f}{envoy}")
    print("(best round of each; RSS growth is the largest over the rounds; target >= 0.5x copy, RSS flat)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="upload and download chunk size")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each transfer (best is reported)")
    parser.add_argument("--paths", nargs="+", default=["envoy", "direct"], choices=["envoy", "direct"])
    parser.add_argument("--no-rest", dest="rest", action="store_false", help="skip the REST download")
    parser.add_argument("--tmp-dir", default=None, help="where the file, its copy and the registry live")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
