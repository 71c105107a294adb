"""The model registry's domain metrics (docs/metrics.md): artifact bytes in and out.

The registry counts bytes in plain integers as chunks pass (no lock: one event loop);
this collector turns them into counters on scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from services.model.domain import ModelRegistry

__all__ = ["ArtifactCollector"]


class ArtifactCollector(Collector):
    """``agentforge_model_artifact_received_bytes_total{source}`` and ``…_sent_bytes_total``."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "agentforge_model_artifact_received_bytes",
            "Artifact bytes received: UploadModelArtifact chunks accepted (source=upload) and registered "
            "training checkpoints (source=handoff).", labels=("source",))
        for source, count in sorted(self._registry.bytes_received.items()):
            received.add_metric([source], float(count))
        sent = CounterMetricFamily("agentforge_model_artifact_sent_bytes",
                                   "Artifact and export bytes sent by DownloadModelArtifact.")
        sent.add_metric([], float(self._registry.bytes_sent))
        return iter([received, sent])
