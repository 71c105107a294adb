"""Settings of the model registry, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.shared.config import env_overrides

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
    #: An upload makes its bytes durable (fsync) and stores ``committed_bytes`` at least
    #: every this many bytes (also when the client pauses and when the stream ends); a
    #: server crash loses at most this much of an upload in progress (the client resumes
    #: from ``committed_bytes``). Env ``AF_MODEL_UPLOAD_SYNC_BYTES``.
    upload_sync_bytes: int = 64 * 1024 * 1024
    #: Seconds an upload stream may wait for its next chunk before what arrived is made
    #: durable and stored as ``committed_bytes``. Env ``AF_MODEL_UPLOAD_IDLE_SYNC_S``.
    upload_idle_sync_s: float = 0.2
    #: Stream the registry publishes ModelVersionCreated / AliasMoved to.
    #: Env ``AF_MODEL_EVENTS_STREAM``.
    events_stream: str = "events.model"
    #: Stream of training hand-offs (TrainingJobCompleted). Env ``AF_MODEL_TRAINING_STREAM``.
    training_stream: str = "events.training"
    #: Consumer group of the hand-off consumer. Env ``AF_MODEL_CONSUMER_GROUP``.
    consumer_group: str = "model-registry"
    #: Register versions from training hand-offs. Env ``AF_MODEL_HANDOFF_ENABLED`` (1/0).
    handoff_enabled: bool = True
    #: Model id used for a hand-off whose job has neither ``labels["model"]`` nor a phase.
    #: Env ``AF_MODEL_DEFAULT_MODEL``.
    default_model: str = "training"
    #: Seconds between outbox relay polls (it is also woken on every write).
    #: Env ``AF_MODEL_OUTBOX_POLL_S``.
    outbox_poll_s: float = 1.0
    #: The forge service, ``host:port`` (env ``AF_FORGE_ADDR``, as the launcher gives
    #: every service): the hand-off asks it whether a job's phase run was cancelled or
    #: failed (then it registers nothing). Empty: no forge, no such check.
    forge_addr: str = ""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ModelConfig:
        environ = os.environ if env is None else env
        values = env_overrides(cls, "model", environ, skip=("data_dir", "forge_addr"))
        values["forge_addr"] = environ.get("AF_FORGE_ADDR", "").strip()
        root = environ.get("AF_DATA_DIR", "").strip()
        if root:
            values["data_dir"] = Path(root) / "model"
        config = cls(**values)
        if config.max_artifact_bytes < 1:
            raise ValueError("AF_MODEL_MAX_ARTIFACT_BYTES must be >= 1")
        if config.upload_sync_bytes < 1:
            raise ValueError("AF_MODEL_UPLOAD_SYNC_BYTES must be >= 1")
        if config.upload_idle_sync_s <= 0:
            raise ValueError("AF_MODEL_UPLOAD_IDLE_SYNC_S must be > 0")
        return config
