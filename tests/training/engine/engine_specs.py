"""Tiny specs shared by the engine tests (every test runs in about a second)."""

from __future__ import annotations

from services.training.engine import GrokfastSpec, ModelSpec, OptimizerSpec, TaskSpec, TrainingSpec


def tiny_modular_spec(**overrides: object) -> TrainingSpec:
    """x*y mod 23 with a 1-layer, width-32 decoder: 253 training examples, ~ms per step."""
    spec = TrainingSpec(
        task=TaskSpec(kind="modular_arithmetic", modulus=23, train_fraction=0.5),
        model=ModelSpec(layers=1, width=32, heads=2, context_length=4),
        optimizer=OptimizerSpec(kind="adam", lr=1e-3, beta1=0.9, beta2=0.98, weight_decay=0.005,
                                warmup_steps=3),
        grokfast=GrokfastSpec(kind="ema", alpha=0.98, lamb=2.0),
        batch_size=64, max_steps=20, eval_interval=5, checkpoint_interval=5,
        progress_interval=1, keep_checkpoints=10, seed=0, device="cpu",
    )
    return spec.replace(**overrides)
