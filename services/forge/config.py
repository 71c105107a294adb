"""Forge service settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.shared.config import env_overrides

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
    #: Emit a progress event at most this often while a training job runs, in seconds
    #: (env ``AF_FORGE_PROGRESS_EVERY_S``).
    progress_every_s: float = 0.5
    #: Torch threads for the forge's own compute (EvoMerge scoring, BitNet's fine-tune)
    #: (env ``AF_FORGE_TORCH_THREADS``).
    torch_threads: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ForgeConfig:
        e = os.environ if env is None else env
        shared = {"data_dir": "AF_DATA_DIR", "training_addr": "AF_TRAINING_ADDR",
                  "model_addr": "AF_MODEL_ADDR", "redis_url": "REDIS_URL"}
        values = env_overrides(cls, "forge", e, skip=tuple(shared))
        for field, var in shared.items():
            if e.get(var, "").strip():
                values[field] = e[var].strip()
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "forge" / "forge.db"
