"""Forge service settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ForgeConfig"]


@dataclass(frozen=True, slots=True)
class ForgeConfig:
    """How the forge service finds its peers and keeps its state."""

    #: Directory for the phase-run database (env ``AF_DATA_DIR``; the service uses ``<dir>/forge``).
    data_dir: Path = Path(".run/data")
    #: Training service address, ``host:port`` (env ``AF_TRAINING_ADDR``).
    training_addr: str = "127.0.0.1:50051"
    #: Model service address, ``host:port`` (env ``AF_MODEL_ADDR``).
    model_addr: str = "127.0.0.1:50052"
    #: Redis URL for the bus (env ``REDIS_URL``).
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Seconds the register step waits for the model registry to announce the version
    #: (env ``AF_FORGE_REGISTER_TIMEOUT_S``).
    register_timeout_s: float = 120.0
    #: Emit a progress event at most this often while a training job runs (s).
    progress_every_s: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ForgeConfig:
        e = os.environ if env is None else env
        base = cls()
        return cls(
            data_dir=Path(e.get("AF_DATA_DIR") or base.data_dir),
            training_addr=e.get("AF_TRAINING_ADDR") or base.training_addr,
            model_addr=e.get("AF_MODEL_ADDR") or base.model_addr,
            redis_url=e.get("REDIS_URL") or base.redis_url,
            register_timeout_s=float(e.get("AF_FORGE_REGISTER_TIMEOUT_S") or base.register_timeout_s),
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "forge" / "forge.db"
