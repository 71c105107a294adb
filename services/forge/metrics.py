"""The forge service's domain metrics (docs/metrics.md): phase runs by phase and state.

Counted on scrape from the run database (a read-only connection of the collector's own),
so runs a restarted process resumed count too.
"""

from __future__ import annotations

from pathlib import Path

from agentforge.forge.v1 import phase_run_pb2 as pr
from prometheus_client.core import GaugeMetricFamily, Metric

from services.forge.catalog import CATALOG
from services.shared.metrics import SCRAPE_TIMEOUT_S, ScrapeCollector, SqliteReader

__all__ = ["PhaseRunsCollector", "STATE_LABELS"]

#: ``state`` label values: the enum names without their prefix, lower case.
STATE_LABELS: dict[int, str] = {
    v.number: v.name.removeprefix("PHASE_RUN_STATE_").lower()
    for v in pr.PhaseRunState.DESCRIPTOR.values if v.number != pr.PHASE_RUN_STATE_UNSPECIFIED
}


class PhaseRunsCollector(ScrapeCollector):
    """``agentforge_forge_phase_runs{phase,state}``: every available phase of the catalog
    and every state, 0 included (so a dashboard and a rule see zero, not nothing)."""

    name = "forge_phase_runs"

    def __init__(self, database: Path, *, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        super().__init__()
        self._db = SqliteReader(database, timeout_s)

    def close(self) -> None:
        self._db.close()

    def families(self) -> list[Metric]:
        return [GaugeMetricFamily("agentforge_forge_phase_runs", "Phase runs in the database, by phase and state.",
                                  labels=("phase", "state"))]

    def fill(self, families: dict[str, Metric]) -> None:
        (rows,) = self._db.snapshot(("SELECT phase, state, COUNT(*) FROM runs GROUP BY phase, state", ()))
        counts = {(phase.removeprefix("phases/"), state): n for phase, state, n in rows}
        phases = sorted({p for p, d in CATALOG.items() if d.available} | {p for p, _ in counts})
        family = families["agentforge_forge_phase_runs"]
        for phase in phases:
            for number, label in STATE_LABELS.items():
                family.add_metric([phase, label], float(counts.get((phase, number), 0)))
