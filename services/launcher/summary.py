"""What ``make run`` prints after its phase run: the winners, their metrics, where their weights are.

For every ``*winner`` output of the run (``cognate.winner``, ``evomerge.winner``,
``bitnet.winner`` for the pipeline; ``winner`` for one phase) the registry's version is
read through the edge and summarised: its aliases, the metrics that phase is judged by
(validation loss against its alternatives), the artifact's size and sha256, the file the
registry keeps (``<data dir>/model/artifacts/<model>/<version>/artifact``) and the REST
route that downloads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["summary_lines"]


def _f(metrics: Any, key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def _judgement(phase: str, version: Any, run_metrics: Any) -> str:
    m = version.metrics
    if phase == "cognate":
        cands = sorted((k, v) for k, v in run_metrics.items()
                       if k.removeprefix("cognate.").startswith("candidate_") and k.endswith("_val_loss"))
        losses = ", ".join(f"{v:.4f}" for _, v in cands)
        loss = _f(m, "eval_loss")
        return (f"val_loss {loss:.4f}" if loss is not None else "val_loss n/a") + (f" (candidates: {losses})" if losses else "")
    if phase == "evomerge":
        loss, parent = _f(m, "val_loss"), _f(m, "best_parent_val_loss")
        method = version.lineage.merge_method or "?"
        if loss is None or parent is None:
            return f"{method}"
        verdict = "beats" if loss < parent else "does not beat"
        return (f"{method} merge of {len(version.lineage.parent_versions)} parents, held-out val_loss {loss:.4f} "
                f"{verdict} the best parent's {parent:.4f} ({loss / parent:.4f}x)")
    if phase == "bitnet":
        parts = []
        if "bits_per_weight" in m:
            parts.append(f"{m['bits_per_weight']:.2f} bits per ternary weight")
        if "size_ratio" in m:
            parts.append(f"{int(m.get('size_bytes', 0)):,} bytes ({m['size_ratio']:.2f}x the source)")
        if "val_loss" in m and "source_val_loss" in m:
            parts.append(f"val_loss {m['val_loss']:.4f} vs the source's {m['source_val_loss']:.4f} "
                         f"({m['val_loss'] / m['source_val_loss']:.3f}x)")
        return ", ".join(parts)
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(m.items())[:4])


def summary_lines(run: Any, get_version: Callable[[str], Any], *, edge_url: str,
                  data_dir: Path | None) -> list[str]:
    """Lines describing each winner of ``run`` (a ``PhaseRun``); ``get_version(name)`` reads a
    ``ModelVersion`` (through the edge)."""
    winners = [(k.rpartition(".")[0] or run.phase.split("/")[-1], v)
               for k, v in sorted(run.outputs.artifacts.items()) if k.split(".")[-1] == "winner"]
    order = {"cognate": 0, "evomerge": 1, "bitnet": 2}
    winners.sort(key=lambda kv: order.get(kv[0], 9))
    if not winners:
        return []
    width = max(len(p) for p, _ in winners)
    lines = ["winners:"]
    for phase, name in winners:
        try:
            version = get_version(name)
        except Exception as exc:  # noqa: BLE001 - the summary must not hide the run's result
            lines.append(f"  {phase:<{width}}  {name}  (could not read it: {exc})")
            continue
        aliases = f" @{', @'.join(version.aliases)}" if version.aliases else ""
        lines.append(f"  {phase:<{width}}  {version.name}{aliases}")
        lines.append(f"  {'':<{width}}  {_judgement(phase, version, run.outputs.metrics)}")
        art = version.artifact
        if art.sha256:
            lines.append(f"  {'':<{width}}  artifact {art.size_bytes:,} bytes, sha256 {art.sha256[:16]}…")
        model, _, vid = version.name.removeprefix("models/").partition("/versions/")
        if data_dir is not None:
            lines.append(f"  {'':<{width}}  file     {data_dir / 'model' / 'artifacts' / model / vid / 'artifact'}")
        lines.append(f"  {'':<{width}}  download GET {edge_url}/v1/{version.name}:download")
    return lines
