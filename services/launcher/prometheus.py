"""Prometheus file-based service discovery for the mesh the launcher starts.

The launcher picks metrics ports when it starts (free ones unless configured), so a
static ``prometheus.yml`` cannot name them. Instead it writes the targets it started to
``<run_dir>/prometheus/agentforge.json`` in Prometheus' ``file_sd_configs`` format (one
group per process, labelled ``service``; Envoy's admin ``/stats/prometheus`` too) and
removes the file on stop. ``deploy/prometheus.yml`` reads ``../.run/prometheus/*.json``
(``make up``'s run dir), and Prometheus re-reads the file on change.

Format: https://prometheus.io/docs/prometheus/latest/configuration/configuration/#file_sd_config
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["TARGETS_FILE", "file_sd_groups", "remove_targets", "write_targets"]

#: Where the targets go, relative to the run directory.
TARGETS_FILE = Path("prometheus") / "agentforge.json"


def file_sd_groups(metrics_ports: Mapping[str, int], *, host: str = "127.0.0.1",
                   envoy_admin_port: int | None = None,
                   service_of: Callable[[str], str] = lambda name: name) -> list[dict[str, object]]:
    """One target group per process whose metrics endpoint is on (port > 0), then Envoy.

    ``metrics_ports`` is keyed by process name; ``service_of`` gives the ``service`` label
    (``realtime-2`` → ``realtime``: the processes of one service differ by ``instance``).
    """
    groups: list[dict[str, object]] = [
        {"targets": [f"{host}:{port}"], "labels": {"service": service_of(name)}}
        for name, port in metrics_ports.items() if port > 0
    ]
    if envoy_admin_port:
        groups.append({"targets": [f"{host}:{envoy_admin_port}"],
                       "labels": {"service": "envoy", "__metrics_path__": "/stats/prometheus"}})
    return groups


def write_targets(run_dir: Path, groups: list[dict[str, object]]) -> Path:
    """Write the file atomically (Prometheus may read it at any moment)."""
    path = run_dir / TARGETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove_targets(run_dir: Path) -> None:
    (run_dir / TARGETS_FILE).unlink(missing_ok=True)
