"""The monitoring service: real health of every component, method metrics, alerts.

Modules: ``config`` (knobs), ``health`` / ``alerting`` / ``promtext`` (pure domain
rules), ``probes`` / ``watcher`` / ``events`` / ``store`` (I/O adapters), ``alerts``
(rules and alerts), ``mesh_api`` (reflection and health for the edge), ``servicer`` (proto ↔ domain), ``server`` (wiring, entry point).
"""

__all__: list[str] = []
