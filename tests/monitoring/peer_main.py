"""A tiny real peer process: the shared runtime with only grpc.health.v1.

``python -m tests.monitoring.peer_main PORT`` binds 127.0.0.1:PORT (0 = free) and
prints the shared ready line.
"""

from __future__ import annotations

import asyncio
import sys

from services.shared.config import ServerConfig
from services.shared.server import serve

if __name__ == "__main__":
    port = int(sys.argv[1])
    config = ServerConfig(host="127.0.0.1", port=port, metrics_port=-1, grace_seconds=0.2)
    asyncio.run(serve(config, "peer", lambda server: []))
