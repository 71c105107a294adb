"""A stand-in for a mesh service, run by the launcher tests through ``MeshConfig.commands``.

``python tests/launcher/standin_service.py NAME [--crash]`` serves the shared runtime
(health, reflection, metrics, ready line) under the service name NAME; health reports the
real service (``agentforge.NAME.v1.<Name>Service``, as Envoy's health checks ask) SERVING,
but no servicer is registered, so its RPCs answer UNIMPLEMENTED,
after writing the ``AF_*``/``REDIS_URL`` environment it was given to
``$AF_DATA_DIR/NAME/env.json``. ``--crash`` prints an error and exits 3 before ready;
``--crash-if PATH`` does so only while PATH exists (a service that crashes on restart).
``--child`` starts a ``sleep`` in its process group first (like the training service's
workers) and writes its pid to ``$AF_DATA_DIR/NAME/child.pid``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc.aio

from services.shared.server import run_service


def main(argv: list[str]) -> int:
    name = argv[0]
    crash_if = argv[argv.index("--crash-if") + 1] if "--crash-if" in argv else None
    if "--crash" in argv or (crash_if is not None and Path(crash_if).exists()):
        print(f"standin {name}: configuration is broken (deliberate crash)", file=sys.stderr, flush=True)
        return 3
    out = Path(os.environ["AF_DATA_DIR"]) / name
    out.mkdir(parents=True, exist_ok=True)
    if "--child" in argv:
        child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
        (out / "child.pid").write_text(str(child.pid))
    env = {k: v for k, v in os.environ.items() if k.startswith("AF_") or k in ("REDIS_URL", "PYTHONPATH")}
    (out / "env.json").write_text(json.dumps(env))

    module = importlib.import_module(f"agentforge.{name}.v1.{name}_service_pb2")
    full_names = [svc.full_name for svc in module.DESCRIPTOR.services_by_name.values()]

    def register(server: grpc.aio.Server) -> list[str]:
        return full_names

    run_service(name, register)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
