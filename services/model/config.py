"""Settings of the model registry, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelConfig"]

_GIB = 1024**3


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the registry stores where, and how it talks to the bus.

    ``from_env`` reads the variable named beside each field; unset or empty means the
    default.
    """

    #: Root of the registry's durable state: ``<data_dir>/registry.db`` (SQLite, WAL) and
    #: ``<data_dir>/artifacts/``. Env ``AF_DATA_DIR`` (this is ``$AF_DATA_DIR/model``);
    #: default ``./data/model``.
    data_dir: Path = Path("data/model")
    #: Largest artifact an upload may declare, in bytes. Env ``AF_MODEL_MAX_ARTIFACT_BYTES``.
    max_artifact_bytes: int = 8 * _GIB
    #: Stream the registry publishes ModelVersionCreated / AliasMoved to.
    #: Env ``AF_MODEL_EVENTS_STREAM``.
    events_stream: str = "events.model"
    #: Stream of training hand-offs (TrainingJobCompleted). Env ``AF_MODEL_TRAINING_STREAM``.
    training_stream: str = "events.training"
    #: Consumer group of the hand-off consumer. Env ``AF_MODEL_CONSUMER_GROUP``.
    consumer_group: str = "model-registry"
    #: Register versions from training hand-offs. Env ``AF_MODEL_HANDOFF`` (1/0).
    handoff_enabled: bool = True
    #: Model id used for a hand-off whose job has neither ``labels["model"]`` nor a phase.
    #: Env ``AF_MODEL_DEFAULT_MODEL``.
    default_model: str = "training"
    #: Seconds between outbox relay polls (it is also woken on every write).
    #: Env ``AF_MODEL_OUTBOX_POLL_S``.
    outbox_poll_s: float = 1.0

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ModelConfig:
        environ = os.environ if env is None else env
        base = cls()

        def get(name: str) -> str:
            return environ.get(name, "").strip()

        root = get("AF_DATA_DIR")
        handoff = get("AF_MODEL_HANDOFF").lower()
        config = cls(
            data_dir=Path(root) / "model" if root else base.data_dir,
            max_artifact_bytes=int(get("AF_MODEL_MAX_ARTIFACT_BYTES") or base.max_artifact_bytes),
            events_stream=get("AF_MODEL_EVENTS_STREAM") or base.events_stream,
            training_stream=get("AF_MODEL_TRAINING_STREAM") or base.training_stream,
            consumer_group=get("AF_MODEL_CONSUMER_GROUP") or base.consumer_group,
            handoff_enabled=base.handoff_enabled if not handoff else handoff in ("1", "true", "yes", "on"),
            default_model=get("AF_MODEL_DEFAULT_MODEL") or base.default_model,
            outbox_poll_s=float(get("AF_MODEL_OUTBOX_POLL_S") or base.outbox_poll_s),
        )
        if config.max_artifact_bytes < 1:
            raise ValueError("AF_MODEL_MAX_ARTIFACT_BYTES must be >= 1")
        return config
